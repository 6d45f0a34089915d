"""Validation rows and test rows: the prepared held-out documents divide into a validation
part (what dynamic batch loading and in-loop evals read) and a test part (what final
figures and comparisons report), disjoint, recorded in the manifest, stable across runs."""

import json
import os

import jax
import numpy as np
import pytest

import tiny_world
from jshear import sharding as shd
from jshear.data import prepare as prep
from jshear.data.mixture import domain_sources


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return tiny_world.build(tmp_path_factory.mktemp("world"))


def _prepare(world, out, eval_docs, workers=0):
  domains = {d: os.path.join(world["corpus"], d) for d in sorted(os.listdir(world["corpus"]))}
  prep.prepare(world["hf"], domains, str(out), seq_len=tiny_world.SEQ, eval_docs=eval_docs,
               workers=workers, progress=False)
  with open(os.path.join(out, "manifest.json")) as f:
    return json.load(f)


def _rows(src):
  return [np.asarray(src[i]) for i in range(len(src))]


@pytest.mark.parametrize("eval_docs,by", [(4, "documents"), (1, "rows")])
def test_valid_and_test_rows_are_disjoint_recorded_and_stable(world, tmp_path, eval_docs, by):
  m = _prepare(world, tmp_path / "a", eval_docs)
  again = _prepare(world, tmp_path / "b", eval_docs, workers=2)   # another run, other workers
  for d, entry in m["domains"].items():
    how = entry["eval_split"]
    assert how["by"] == by
    assert how["valid_rows"] >= 1 and how["test_rows"] >= 1
    assert how["valid_rows"] + how["test_rows"] == entry["eval"]["sequences"]
    if by == "documents":
      assert how["valid_docs"] == 1 and how["test_docs"] == 3   # a quarter, whole documents
      assert entry["valid"]["docs"] + entry["test"]["docs"] == eval_docs
  for name in ("valid", "test", "eval"):
    a, b = (domain_sources(str(p), name) for p in (tmp_path / "a", tmp_path / "b"))
    for d in a:
      assert len(a[d]) == m["domains"][d]["eval_split"].get(f"{name}_rows", len(a[d]))
      for x, y in zip(_rows(a[d]), _rows(b[d])):
        np.testing.assert_array_equal(x, y)
  valid, test, both = (domain_sources(str(tmp_path / "a"), s) for s in ("valid", "test", "eval"))
  for d in valid:
    v = {r[0].tobytes() for r in _rows(valid[d])}
    t = {r[0].tobytes() for r in _rows(test[d])}
    assert not v & t, f"{d}: a row is in both parts"
    # eval is the two parts, validation first (what older readers of "eval" get)
    assert [r[0].tobytes() for r in _rows(both[d])] == (
        [r[0].tobytes() for r in _rows(valid[d])] + [r[0].tobytes() for r in _rows(test[d])])


def test_in_loop_eval_reads_validation_rows_on_any_device_count(world):
  from jshear.config_base import base_config
  from jshear.model.config import ModelConfig
  from jshear.train.loop import Context, DomainEval
  valid = domain_sources(world["data"], "valid")
  cfg = ModelConfig.from_hf_dir(world["hf"])
  seen = []
  for n in (1, 8):
    mesh = shd.make_mesh({"data": 1, "fsdp": n, "tensor": 1}, devices=jax.devices()[:n])
    ctx = Context(cfg=base_config(), workdir="", mesh=mesh, writer=None, data_dir=world["data"])
    ev = DomainEval(ctx, cfg, list(valid), 8, 1)
    rows = np.concatenate([shd.to_host(b["tokens"]) for b in ev.batches])
    seen.append(rows)
    want = [np.asarray(valid[d][i])[0] for d in valid for i in range(min(8, len(valid[d])))]
    got = [r for r in rows if r.any()]
    assert len(got) == len(want)
    for a, b in zip(got, want):
      np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(seen[0], seen[1])


def test_reported_figures_read_only_the_test_rows(world, tmp_path, monkeypatch):
  """compare's held-out figure (what paired and the tables use) asks for the test split,
  and its cache key names the data's manifest and the split."""
  from jshear.eval import heldout as heldout_mod
  from jshear.experiments import compare
  asked = []
  real = heldout_mod.domain_sources
  monkeypatch.setattr(heldout_mod, "domain_sources",
                      lambda path, split="train", **k: asked.append(split) or real(path, split))
  cfg = tiny_world.config(world)
  cfg.mesh.ici.update(data=1, fsdp=-1, tensor=1)
  cache = str(tmp_path / "heldout.json")
  res = compare.heldout(cfg, world["hf"], cache, rows=4)
  assert asked == ["test"] and res["split"] == "test"
  test = domain_sources(world["data"], "test")
  assert {d: v["rows"] for d, v in res["domains"].items()} == {
      d: min(4, len(s)) for d, s in test.items() if len(s)}
  with open(cache) as f:
    key = json.load(f)["key"]
  assert key["split"] == "test" and len(key["data"]) == 16
  compare.heldout(cfg, world["hf"], cache, rows=4)   # cached: nothing read again
  assert asked == ["test"]
