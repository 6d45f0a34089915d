"""Iterative pruning while training: straight-through masks, DimCHOP and gradual LayerCHOP
schedules, and both methods end to end (exact target, HF export, exact resume)."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

import tiny_world
from jshear.config_base import reset_unread_blocks
from jshear.errors import JShearError
from jshear.metrics import read_metrics
from jshear.model.layers import apply_mask
from jshear.model.masks import ones_masks
from jshear.model.transformer import forward
from jshear.prune import iterative
from jshear.prune.targets import TargetShape
from jshear.train.pipeline import run
from test_masks import TOKENS, tiny


def test_apply_mask_straight_through_keeps_values_and_passes_gradient():
  x = jnp.arange(1.0, 7.0).reshape(2, 3)
  m = jnp.array([1.0, 0.0, 1.0])
  w = jnp.array([[2.0, 3.0, 4.0], [5.0, 6.0, 7.0]])
  for ste in (None, 0.0, 0.5, 1.0):
    np.testing.assert_array_equal(apply_mask(x, m, ste), x * m)
    g = jax.grad(lambda x: jnp.sum(apply_mask(x, m, ste) * w))(x)
    s = 0.0 if ste is None else ste
    np.testing.assert_allclose(g, w * (m + s * (1 - m)))


@pytest.mark.parametrize("family", ["llama", "parallel"])
def test_forward_with_straight_through_masks(family):
  cfg, params = tiny(family)
  masks = ones_masks(cfg, ("kv", "intermediate", "hidden"))
  masks["intermediate"] = masks["intermediate"].at[1, 5].set(0.0)
  masks["kv"] = masks["kv"].at[0, 2].set(0.0)
  masks["hidden"] = masks["hidden"].at[7].set(0.0)
  plain = forward(params, TOKENS, masks, cfg=cfg)
  np.testing.assert_array_equal(forward(params, TOKENS, masks, cfg=cfg, mask_ste=1.0), plain)

  def grads(ste):
    loss = lambda p: jnp.mean(forward(p, TOKENS, masks, cfg=cfg, mask_ste=ste) ** 2)
    return jax.grad(loss)(params)

  off, on = grads(None), grads(1.0)
  if family == "llama":
    masked_up = lambda g: g["layers"]["w_up"][1, :, 5]
    masked_k = lambda g: g["layers"]["wk"][0, :, 2]
  else:  # fused input projection: [q | k | v | gate | up]
    H, KV, Dh, I = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
    masked_up = lambda g: g["layers"]["w_in"][1, :, (H + 2 * KV) * Dh + I + 5]
    masked_k = lambda g: g["layers"]["w_in"][0, :, H * Dh + 2 * Dh:H * Dh + 3 * Dh]
  # Without straight-through, masked units are frozen; with it they still learn.
  assert float(jnp.abs(masked_up(off)).max()) == 0.0
  assert float(jnp.abs(masked_up(on)).max()) > 0.0
  assert float(jnp.abs(masked_k(off)).max()) == 0.0
  assert float(jnp.abs(masked_k(on)).max()) > 0.0
  assert float(jnp.abs(on["embed"][:, 7]).max()) > 0.0


def test_intermediate_targets_run_from_source_to_target():
  cfg, _ = tiny("llama")  # 3 layers, 6 heads / 3 kv, hidden 48, inter 64
  tgt = TargetShape(2, 2, 1, 32, 40)
  groups = ("layer", "head", "kv", "intermediate", "hidden")
  start = iterative.intermediate_target(cfg, tgt, groups, 0.0)
  assert start == TargetShape(3, 6, 3, 48, 64)
  assert iterative.intermediate_target(cfg, tgt, groups, 1.0) == tgt
  shapes = [iterative.intermediate_target(cfg, tgt, groups, f) for f in np.linspace(0, 1, 7)]
  for a, b in zip(shapes, shapes[1:]):
    assert all(getattr(b, f) <= getattr(a, f) for f in a.__dataclass_fields__)
    assert b.num_heads % b.num_kv_heads == 0


class _Cfg:
  def __init__(self, steps, **dimchop):
    self.prune = type("P", (), {"steps": steps, "dimchop": type("D", (), dimchop)})


def test_dimchop_schedule_rescoring_rounds():
  cfg, params = tiny("llama")
  tgt = TargetShape(2, 4, 2, 32, 40)
  groups = ("layer", "kv", "intermediate", "hidden")
  calls = []
  rng = np.random.default_rng(0)

  def scorer(p):
    calls.append(p)
    return {"layer": rng.random(3), "kv": rng.random((3, 3)),
            "intermediate": rng.random((3, 64)), "hidden": rng.random(48)}

  run_cfg = _Cfg(every=3, end_fraction=0.8, steps=12, straight_through=1.0)
  sched = iterative.dimchop_schedule(run_cfg, cfg, tgt, groups, scorer)
  assert sched.steps() == [0, 3, 6]  # last change at or before step 0.8 * 12 - 1
  kept, stes = [], []
  for step in range(12):
    out = sched.masks_at(step, params)
    if step not in (0, 3, 6):
      assert out is None
      continue
    m, ste = out
    kept.append((m["layer"].sum(), m["kv"].sum(1).max(), m["intermediate"].sum(1).max(),
                 m["hidden"].sum()))
    stes.append(ste)
  assert len(calls) == 3
  assert kept[-1] == (2, 2, 40, 32)          # exactly the target at the last round
  assert kept[0] != kept[-1] and all(a >= b for x, y in zip(kept, kept[1:]) for a, b in zip(x, y))
  assert stes == [1.0, 1.0, 0.0]             # exact target network after the last round
  with pytest.raises(JShearError, match=r"dimchop\.every"):
    iterative.dimchop_schedule(_Cfg(every=0, end_fraction=0.8, steps=12, straight_through=1.0),
                               cfg, tgt, groups, scorer)


def test_gradual_layerchop_drops_one_layer_at_a_time():
  cfg, params = tiny("llama", num_layers=8)
  widths = {"hidden": np.ones(48, np.float32)}
  sched = iterative.layerchop_schedule(cfg, TargetShape(5, 6, 3, 48, 64), ("layer", "hidden"),
                                       every=2, steps=10, dropped=[5, 2, 3], width_masks=widths)
  seen = []
  for step in range(10):
    out = sched.masks_at(step, params)
    if out is not None:
      m, ste = out
      assert ste == 0.0 and m["layer"][0] == 1 and m["layer"][-1] == 1
      np.testing.assert_array_equal(m["hidden"], widths["hidden"])
      seen.append((step, tuple(np.nonzero(m["layer"] == 0)[0])))
  assert seen == [(0, (2,)), (2, (2, 3)), (4, (2, 3, 5))]
  with pytest.raises(JShearError, match="prune.steps"):
    iterative.layerchop_schedule(cfg, TargetShape(5, 6, 3, 48, 64), ("layer",), every=5,
                                 steps=10, dropped=[2, 3, 5], width_masks={})


# ---- end to end ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return tiny_world.build(tmp_path_factory.mktemp("world"))


def _kept(workdir):
  return {r["step"]: r["prune/kept/layer"] for r in read_metrics(workdir)
          if "prune/kept/layer" in r}


def _losses(workdir):
  return {r["step"]: r["loss"] for r in read_metrics(workdir) if "lm_loss" in r}


def test_dimchop_end_to_end_with_exact_resume(world, tmp_path):
  cfg = tiny_world.config(world, num_layers=2)
  cfg.stages, cfg.prune.method, cfg.final_eval = "prune,finalize,export", "dimchop", False
  reset_unread_blocks(cfg)  # the tiny world's learned knobs
  cfg.prune.dimchop.every, cfg.prune.dimchop.end_fraction = 2, 1.0
  cfg.prune.calib.rows, cfg.prune.calib.batch = 2, 8
  work = str(tmp_path / "dimchop")
  summary = run(cfg, work)
  c = transformers.AutoModelForCausalLM.from_pretrained(summary["hf_dir"]).config
  assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.hidden_size,
          c.intermediate_size) == (2, 2, 1, 32, 48)
  assert _kept(work) == {0: 3.0, 2: 3.0, 4: 2.0}  # 4 layers -> 2 over three rounds
  ref = _losses(work)
  # Drop the last checkpoint: the rerun resumes at step 3 and re-scores at step 4.
  shutil.rmtree(os.path.join(work, "prune", "checkpoints", "6"))
  for d in ("prune/DONE", "finalize", "export", "masks", "pruned", "hf"):
    p = os.path.join(work, d)
    shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
  run(cfg, work)
  assert _losses(work) == ref


def test_gradual_layerchop_end_to_end(world, tmp_path):
  cfg = tiny_world.config(world, num_layers=2)
  cfg.stages, cfg.prune.method, cfg.final_eval = "prune,finalize,export", "layerchop", False
  reset_unread_blocks(cfg)  # the tiny world's learned knobs
  cfg.prune.layerchop.every, cfg.prune.layerchop.width = 3, "magnitude"
  work = str(tmp_path / "chop")
  summary = run(cfg, work)
  c = transformers.AutoModelForCausalLM.from_pretrained(summary["hf_dir"]).config
  assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (2, 32, 48)
  assert _kept(work) == {0: 3.0, 3: 2.0}
  with np.load(os.path.join(work, "masks", "binary_masks.npz")) as f:
    assert f["layer"][0] == 1 and f["layer"][-1] == 1 and f["layer"].sum() == 2


def test_gradual_layerchop_that_cannot_finish_is_refused(world, tmp_path):
  cfg = tiny_world.config(world, num_layers=2)
  cfg.prune.method, cfg.prune.layerchop.every = "layerchop", 6
  reset_unread_blocks(cfg)
  with pytest.raises(JShearError, match=r"layerchop\.every=6"):
    run(cfg, str(tmp_path / "w"))
