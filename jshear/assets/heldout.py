"""The fixed held-out text for perplexity checks: GPL-3, cached in $JSHEAR_CACHE/text/gpl-3/."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from jshear.assets.fetch import apt_download, cache_root, deb_info, deb_members, ensure, write_json
from jshear.errors import check

# The GPL-3 text that every Debian system ships.
GPL3_SYSTEM_PATH = "/usr/share/common-licenses/GPL-3"
GPL3_SHA256 = "3972dc9744f6499f0f9b2dbf76696f2ae7ad8af9b23dde66d6af86c9dfb36986"


def _gpl3_bytes(work: Path, system_path: str = GPL3_SYSTEM_PATH) -> tuple[bytes, str]:
  """GPL-3 from this system, else from Debian's base-files package (downloaded into `work`)."""
  if os.path.isfile(system_path):
    return Path(system_path).read_bytes(), system_path
  deb = apt_download("base-files", work)
  member = GPL3_SYSTEM_PATH.lstrip("/")
  files = deb_members(deb, lambda n: n == member)
  check(member in files, f"{deb.name}: has no {member}")
  info = deb_info(deb)
  shutil.rmtree(work)
  return files[member], f"deb:{info['package']}={info['version']}"


def _build_heldout(tmp: Path) -> None:
  data, origin = _gpl3_bytes(tmp / "_downloads")
  digest = hashlib.sha256(data).hexdigest()
  check(digest == GPL3_SHA256, f"GPL-3 from {origin}: sha256 {digest}, expected {GPL3_SHA256}")
  (tmp / "GPL-3.txt").write_bytes(data)
  write_json(tmp / "SOURCE.json", {"origin": origin, "sha256": digest})


def heldout_text_path() -> str:
  """Path of the fixed held-out text (GPL-3, 35 KB) used for perplexity checks."""
  return os.path.join(ensure(cache_root() / "text" / "gpl-3", _build_heldout), "GPL-3.txt")
