"""Where jshear keeps fetched and derived files.

Stdlib only and no downloads, so readers (jshear.data, jshear.eval, jshear.convert) can
locate the cache without importing the fetch code in jshear.assets. Writing a directory
there whole is `jshear.atomic.atomic_dir`.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
  """$JSHEAR_CACHE, or ~/.cache/jshear; read on every call so tests can point it elsewhere."""
  return Path(os.environ.get("JSHEAR_CACHE") or "~/.cache/jshear").expanduser().absolute()
