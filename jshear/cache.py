"""Where jshear keeps fetched and derived files, and how a directory gets there whole.

Stdlib only and no downloads, so readers (jshear.data, jshear.eval, jshear.convert) can
locate the cache and write atomically without importing the fetch code in jshear.assets.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from jshear.errors import check


def cache_root() -> Path:
  """$JSHEAR_CACHE, or ~/.cache/jshear; read on every call so tests can point it elsewhere."""
  return Path(os.environ.get("JSHEAR_CACHE") or "~/.cache/jshear").expanduser().absolute()


def remove(path: Path) -> None:
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path, ignore_errors=True)
  elif path.exists() or path.is_symlink():
    path.unlink()


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def building(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
  """Yield an empty temp dir next to `final`; it becomes `final` only if the block succeeds.

  On any error the temp dir is removed, so `final` never exists half-written. With
  `overwrite`, an existing `final` is swapped out only after the new one is complete.
  """
  final = Path(final).absolute()
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
  try:
    yield tmp
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result should not be
    if final.exists() and overwrite:
      old = final.with_name(f".{final.name}.{os.getpid()}.old")
      os.rename(final, old)
      os.rename(tmp, final)
      remove(old)
    else:
      check(not final.exists(), f"{final} already exists (pass overwrite=True to replace it)")
      os.rename(tmp, final)
  finally:
    remove(tmp)
