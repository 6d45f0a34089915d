"""The step builder: accumulation, non-finite skipping, schedules; checkpoints across meshes."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jshear import sharding as shd
from jshear.checkpoint import Checkpointer, abstract_like
from jshear.config_base import train_block
from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.model.params import init_params
from jshear.config_base import base_config
from jshear.optim import (build_optimizer, check_one_schedule, make_schedule, schedule_fn,
                          stage_span)
from jshear.model.state_sharding import put_global, state_shardings
from jshear.train.step import init_state, make_train_step, step_addons, step_groups

GATES = step_groups(step_addons(gates=True))  # weights, mask logits, multipliers

CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8)


def _batch(seed=0, B=8, T=16):
  toks = np.random.default_rng(seed).integers(0, 64, (B, T)).astype(np.int32)
  return {"tokens": toks, "segment_ids": np.ones_like(toks),
          "positions": np.tile(np.arange(T, dtype=np.int32), (B, 1))}


def _state(block=None):
  block = block or train_block(steps=10, warmup_steps=0, lr=1e-2, schedule="constant")
  opt = build_optimizer(block, block.steps)
  return opt, init_state(init_params(CFG, jax.random.key(0)), opt, 0)


def test_grad_accumulation_equals_one_big_batch():
  # Plain SGD, so the update is the gradient (Adam's first step is sign-like and would
  # amplify roundoff in near-zero gradients).
  opt = optax.sgd(1.0)
  state = init_state(init_params(CFG, jax.random.key(0)), opt, 0)
  one = jax.jit(make_train_step(CFG, opt, grad_accum=1))
  four = jax.jit(make_train_step(CFG, opt, grad_accum=4))
  s1, m1 = one(state, _batch())
  s4, m4 = four(state, _batch())
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
  np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s4["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bf16_compute_keeps_fp32_master_weights():
  opt, state = _state()
  step = jax.jit(make_train_step(CFG, opt, compute_dtype=jnp.bfloat16))
  new, m = step(state, _batch())
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new["params"]))
  ref = jax.jit(make_train_step(CFG, opt))(state, _batch())[1]
  assert abs(float(m["lm_loss"]) - float(ref["lm_loss"])) < 0.05


def test_non_finite_step_is_skipped_and_counted():
  opt, state = _state()
  step = jax.jit(make_train_step(CFG, opt))
  bad = dict(state, params=jax.tree.map(lambda x: x, state["params"]))
  bad["params"]["final_norm"] = bad["params"]["final_norm"].at[0].set(jnp.nan)
  new, m = step(bad, _batch())
  assert int(m["skipped"]) == 1 and int(m["bad_streak"]) == 1
  for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(bad["params"])):
    np.testing.assert_array_equal(a, b)  # unchanged, NaN included
  for a, b in zip(jax.tree.leaves(new["opt_state"]), jax.tree.leaves(bad["opt_state"])):
    np.testing.assert_array_equal(a, b)  # moments and the schedule's count too
  new, m = step(new, _batch())
  assert int(m["bad_streak"]) == 2 and int(new["step"]) == 2
  good, m = step(state, _batch())
  assert int(m["skipped"]) == 0 and int(m["bad_streak"]) == 0


def test_schedules():
  cos = make_schedule("cosine", 1.0, 100, 10, 0.1)
  assert float(cos(0)) == 0.0 and abs(float(cos(10)) - 1.0) < 1e-6
  assert abs(float(cos(100)) - 0.1) < 1e-6
  wsd = make_schedule("wsd", 1.0, 100, 10, 0.0, decay_fraction=0.2)
  assert [round(float(wsd(s)), 4) for s in (5, 10, 50, 79, 80, 90, 100)] == \
      [0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.0]
  lin = make_schedule("linear", 2.0, 20, 0, 0.5)
  assert abs(float(lin(10)) - 1.5) < 1e-6
  with pytest.raises(JShearError, match="train.schedule must be one of"):
    make_schedule("exp", 1.0, 10, 1)


def test_one_schedule_spans_the_pruning_and_continue_stages():
  c = base_config()
  c.prune.update(steps=30, lr=3e-4, warmup_steps=3, one_schedule=True)
  c.continued.update(steps=10, lr=3e-4, warmup_steps=2)
  whole = make_schedule("cosine", 3e-4, 40, 3, 0.1)
  prune = schedule_fn(c.prune, 30, stage_span(c, "prune", True))
  cont = schedule_fn(c.continued, 10, stage_span(c, "continue", True))
  for s in (0, 2, 3, 17, 29):
    assert abs(float(prune(s)) - float(whole(s))) < 1e-12
  # the continue stage picks the schedule up at step 30 after re-warming its new optimizer
  assert float(cont(0)) == 0.0
  assert abs(float(cont(1)) - 0.5 * float(whole(31))) < 1e-12
  for s in (2, 5, 10):
    assert abs(float(cont(s)) - float(whole(30 + s))) < 1e-12
  # off, or a pruning stage that does not train: each stage its own schedule
  assert stage_span(c, "continue", False) is None
  c.prune.one_schedule = False
  assert stage_span(c, "continue", True) is None
  c.prune.one_schedule = True
  c.continued.lr = 1e-4
  with pytest.raises(JShearError, match="continued.lr=0.0001 differs from prune.lr=0.0003"):
    check_one_schedule(c)


def test_checkpoint_restores_onto_a_different_mesh(tmp_path):
  opt, state = _state()
  step = jax.jit(make_train_step(CFG, opt))
  state, _ = step(state, _batch())
  abstract = jax.eval_shape(lambda: state)

  def placed(mesh_sizes):
    mesh = shd.make_mesh(mesh_sizes)
    return mesh, state_shardings(CFG, abstract, mesh)

  mesh_a, sh_a = placed({"data": 1, "fsdp": 8, "tensor": 1})
  host = jax.device_get(state)
  on_a = put_global(host, sh_a)
  ckpt = Checkpointer(str(tmp_path / "ck"))
  ckpt.save(1, on_a, {"note": "a"}, force=True)
  ckpt.close()
  # An interrupted save (a tmp dir Orbax never committed) is not a checkpoint.
  os.makedirs(tmp_path / "ck" / "2.orbax-checkpoint-tmp-123" / "state")
  mesh_b, sh_b = placed({"data": 2, "fsdp": 4, "tensor": 1})
  ckpt = Checkpointer(str(tmp_path / "ck"))
  assert ckpt.latest_step() == 1
  restored, extra = ckpt.restore(abstract_like(abstract, sh_b))
  ckpt.close()
  assert extra == {"note": "a"}
  wq = restored["params"]["layers"]["wq"]
  assert wq.sharding == sh_b["params"]["layers"]["wq"]
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(host)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _prune_block(**learned):
  """The prune block of the run config (its learned keys in prune.learned), a short stage."""
  from jshear.config_base import base_config
  block = base_config().prune
  block.update(steps=10, warmup_steps=0, lr=1e-3, schedule="constant")
  block.learned.update(learned)
  return block


def _gate_tree():
  return {"params": {"w": jnp.zeros(3)},
          "prune": {"log_alpha": {"hidden": jnp.zeros(4)}, "lambda1": {"hidden": jnp.zeros(())},
                    "lambda2": {"hidden": jnp.zeros(())}}}


def _one_update(block, grads=None, steps=10):
  opt = build_optimizer(block, steps, GATES)
  tree = _gate_tree()
  grads = grads or jax.tree.map(jnp.ones_like, tree)
  updates, _ = opt.update(grads, opt.init(tree), tree)
  return optax.apply_updates(tree, updates)


def test_optimizer_groups_descend_weights_and_masks_and_ascend_lambdas():
  block = _prune_block(mask_lr=0.5, lambda_lr=-0.25, schedule_masks=False, clip_masks=False)
  block.clip_norm = 0.0
  new = _one_update(block)
  np.testing.assert_allclose(new["params"]["w"], -1e-3, rtol=1e-3)          # AdamW step
  np.testing.assert_allclose(new["prune"]["log_alpha"]["hidden"], -0.5, rtol=1e-3)
  np.testing.assert_allclose(new["prune"]["lambda1"]["hidden"], 0.25, rtol=1e-3)  # ascent


def test_mask_and_lambda_options_are_read_from_prune_learned():
  """mask_lr, lambda_lr, schedule_masks and clip_masks act from prune.learned (the keys
  train_block no longer has)."""
  base = _one_update(_prune_block(mask_lr=0.5, lambda_lr=-0.25))
  np.testing.assert_allclose(base["prune"]["log_alpha"]["hidden"], -0.5, rtol=1e-3)
  np.testing.assert_allclose(base["prune"]["lambda1"]["hidden"], 0.25, rtol=1e-3)
  fast = _one_update(_prune_block(mask_lr=2.0, lambda_lr=-3.0))
  np.testing.assert_allclose(fast["prune"]["log_alpha"]["hidden"], -2.0, rtol=1e-3)
  np.testing.assert_allclose(fast["prune"]["lambda1"]["hidden"], 3.0, rtol=1e-3)
  np.testing.assert_array_equal(fast["params"]["w"], base["params"]["w"])  # weights: lr
  # schedule_masks: at step 0 of a warm-up the weight schedule's shape is 0.
  warm = _prune_block(mask_lr=0.5, schedule_masks=True)
  warm.warmup_steps = 5
  assert float(_one_update(warm)["prune"]["log_alpha"]["hidden"][0]) == 0.0
  warm.learned.schedule_masks = False
  np.testing.assert_allclose(_one_update(warm)["prune"]["log_alpha"]["hidden"], -0.5,
                             rtol=1e-3)
  # clip_masks: a huge weight gradient clipped together with the masks' shrinks theirs
  # below Adam's eps, so their step all but vanishes; clipped alone they take a full step.
  grads = jax.tree.map(jnp.ones_like, _gate_tree())
  grads["params"]["w"] = jnp.full(3, 1e9)
  step = {clip: float(_one_update(_prune_block(mask_lr=0.5, clip_masks=clip), grads)
                      ["prune"]["log_alpha"]["hidden"][0]) for clip in (True, False)}
  assert abs(step[True]) < 0.05 and abs(step[False] + 0.5) < 1e-3, step


def test_settle_steps_bring_the_gates_to_rest_and_leave_the_weights_alone():
  """settle_steps=3: the mask logits' steps fall 1, 2/3, 1/3 of mask_lr, then stop; the
  weights' steps are those of settle_steps=0."""
  def deltas(settle):
    block = _prune_block(mask_lr=0.5, schedule_masks=False, clip_masks=False,
                         settle_steps=settle)
    block.clip_norm = 0.0
    opt = build_optimizer(block, 10, GATES)
    tree = _gate_tree()
    state = opt.init(tree)
    grads = jax.tree.map(jnp.ones_like, tree)
    out = []
    for _ in range(5):
      updates, state = opt.update(grads, state, tree)
      out.append((float(updates["prune"]["log_alpha"]["hidden"][0]),
                  float(updates["params"]["w"][0])))
      tree = optax.apply_updates(tree, updates)
    return np.array(out)
  settled, free = deltas(3), deltas(0)
  np.testing.assert_allclose(settled[:, 0], [-0.5, -1 / 3, -1 / 6, 0, 0], rtol=1e-3, atol=1e-7)
  np.testing.assert_allclose(free[:, 0], [-0.5] * 5, rtol=1e-3)
  np.testing.assert_array_equal(settled[:, 1], free[:, 1])


def test_a_weights_only_stage_reads_no_mask_option():
  """A stage with only the weights group is built the same whatever prune.learned says."""
  tree = {"params": {"w": jnp.zeros(3)}}
  grads = {"params": {"w": jnp.full(3, 5.0)}}
  outs = []
  for learned in ({}, {"clip_masks": False, "schedule_masks": False, "mask_lr": 7.0}):
    opt = build_optimizer(_prune_block(**learned), 10)
    state = opt.init(tree)
    updates, _ = opt.update(grads, state, tree)
    outs.append((jax.tree.structure(state), np.asarray(updates["params"]["w"])))
  assert outs[0][0] == outs[1][0]
  np.testing.assert_array_equal(outs[0][1], outs[1][1])
  cont = train_block()
  assert not any(k in cont for k in ("mask_lr", "lambda_lr", "schedule_masks", "clip_masks"))
  assert build_optimizer(cont, 10).init(tree) is not None  # continued: no mask keys needed


def test_groups_come_from_the_declaration_and_frozen_leaves_stay_out():
  """A group named as nothing jshear knows (an adapter at "lora") trains at its declared lr;
  the weights, declared nowhere, are frozen: bitwise unchanged and not in the optimizer
  state. Labels follow the declaration, not key names."""
  from jshear.optim import Group
  from jshear.train.step import build_step, lm_loss
  block = train_block(steps=10, warmup_steps=0, lr=1e-3, schedule="constant", mask_lr=0.5)
  adapters = Group("adapters", (("lora",),), lr="mask_lr")
  opt = build_optimizer(block, 10, (adapters,))
  params = init_params(CFG, jax.random.key(0))
  # A stand-in adapter: a scale on the final norm, so the loss depends on it.
  lora = {"scale": jnp.ones((CFG.hidden_size,), jnp.float32)}
  state = init_state(params, opt, 0, groups=(adapters,), extra={"lora": lora})
  leaves = jax.tree.leaves(state["opt_state"])
  n_params = sum(x.size for x in jax.tree.leaves(params))
  assert sum(x.size for x in leaves) < n_params       # no moments for the frozen weights
  base = lm_loss(CFG)

  def loss(view, mb, inp):
    p = dict(view["params"])
    p["final_norm"] = p["final_norm"] * view["lora"]["scale"]
    return base({**view, "params": p}, mb, inp)

  step = jax.jit(build_step(opt, loss, groups=(adapters,)))
  new, m = step(state, _batch())
  new, m = step(new, _batch(1))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(new["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  moved = np.abs(np.asarray(new["lora"]["scale"]) - 1.0)
  assert moved.max() > 0.1  # Adam at lr 0.5: about one lr per step
  with pytest.raises(ValueError, match="declared twice"):
    init_state(params, opt, 0, groups=(adapters, Group("again", (("lora",),))),
               extra={"lora": lora})


def _prune_state(mid=0.0):
  from jshear.prune.state import init_prune_state
  from jshear.prune.targets import TargetShape
  ps = init_prune_state(CFG, TargetShape(2, 4, 2, 16, 24), ("intermediate", "hidden"),
                        jax.random.key(3))
  # Logits in the middle: samples differ visibly from one draw to the next.
  return ps.replace(log_alpha=jax.tree.map(lambda a: jnp.full_like(a, mid), ps.log_alpha))


def test_learned_masks_draw_a_fresh_sample_per_micro_batch_shared_by_all_shards():
  from jshear.model.transformer import forward
  from jshear.prune.state import sample_masks
  from jshear.model.loss import nll_sum
  from jshear.train.step import split_micro
  opt = optax.sgd(0.0)
  state = init_state(init_params(CFG, jax.random.key(0)), opt, 0, prune=_prune_state(),
                     groups=GATES)
  batch = _batch(5)
  _, m = jax.jit(make_train_step(CFG, opt, grad_accum=2, gates=True))(state, batch)
  # By hand: micro-batch i (rows i, i+2, ...) under the sample for (step 0, micro i).
  rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), 1)
  micro = split_micro({k: jnp.asarray(v) for k, v in batch.items()}, 2)
  def nll(i, j):
    mb = jax.tree.map(lambda x: x[i], micro)
    logits = forward(state["params"], mb["tokens"], sample_masks(state["prune"], rng, 0, j),
                     cfg=CFG, positions=mb["positions"], segment_ids=mb["segment_ids"])
    return float(nll_sum(logits, mb)[0])
  tokens = float(m["tokens"])
  fresh = (nll(0, 0) + nll(1, 1)) / tokens
  shared = (nll(0, 0) + nll(1, 0)) / tokens  # one sample for the whole step
  assert abs(fresh - shared) > 1e-3
  np.testing.assert_allclose(float(m["lm_loss"]), fresh, rtol=1e-5)
  # Data-parallel over 8 devices: every shard of a micro-batch uses the same gates, so the
  # result is the single-device one.
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  sharded = {k: jax.device_put(v, rows) for k, v in batch.items()}
  _, m8 = jax.jit(make_train_step(CFG, opt, grad_accum=1, gates=True))(state, sharded)
  _, m1 = jax.jit(make_train_step(CFG, opt, grad_accum=1, gates=True))(state, batch)
  np.testing.assert_allclose(float(m8["lm_loss"]), float(m1["lm_loss"]), rtol=1e-5)
  by_hand = [float(nll_sum(forward(state["params"], jnp.asarray(batch["tokens"]),
                                   sample_masks(state["prune"], rng, 0, 0), cfg=CFG,
                                   positions=jnp.asarray(batch["positions"]),
                                   segment_ids=jnp.asarray(batch["segment_ids"])),
                           {k: jnp.asarray(v) for k, v in batch.items()})[0]) / tokens]
  np.testing.assert_allclose(float(m8["lm_loss"]), by_hand[0], rtol=1e-5)


def test_zero_weight_lr_keeps_mask_and_lambda_updates_finite():
  block = _prune_block()
  block.update(warmup_steps=2, lr=0.0, schedule="cosine")
  opt = build_optimizer(block, block.steps, GATES)
  state = init_state(init_params(CFG, jax.random.key(0)), opt, 0, prune=_prune_state(2.0),
                     groups=GATES)
  new, m = jax.jit(make_train_step(CFG, opt, prune_warmup_steps=0, gates=True))(state, _batch())
  new, m = jax.jit(make_train_step(CFG, opt, prune_warmup_steps=0, gates=True))(new, _batch())
  assert int(m["skipped"]) == 0
  la0, la2 = state["prune"].log_alpha["hidden"], new["prune"].log_alpha["hidden"]
  assert np.all(np.isfinite(np.asarray(la2))) and not np.array_equal(la0, la2)
  for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(new["params"])):
    np.testing.assert_array_equal(a, b)  # lr 0: weights stay


def test_deterministic_gate_forward_trains_the_kept_masks_with_straight_through_grads():
  from jshear.model.transformer import forward
  from jshear.prune import hard_concrete
  from jshear.prune.state import eval_masks
  from jshear.model.loss import nll_sum
  ps = _prune_state()
  la = {g: jnp.asarray(np.random.default_rng(7).uniform(-3, 3, a.shape), jnp.float32)
        for g, a in ps.log_alpha.items()}
  ps = ps.replace(log_alpha=la, binary_masks=True)  # as the pipeline pairs them
  state = init_state(init_params(CFG, jax.random.key(0)), optax.sgd(1.0), 0, prune=ps,
                     groups=GATES)
  batch = _batch(5)
  step = jax.jit(make_train_step(CFG, optax.sgd(1.0), grad_accum=2, gates=True,
                                 gate_forward="deterministic"))
  new, m = step(state, batch)
  # By hand: the loss of the deterministic masks, and its gradient on each mask entry
  # times the soft score's slope (dropped entries too).
  masks = eval_masks(ps)
  assert all(set(np.unique(np.asarray(v))) == {0.0, 1.0} for v in masks.values())
  tb = {k: jnp.asarray(v) for k, v in batch.items()}
  def loss(mk):
    logits = forward(state["params"], tb["tokens"], mk, cfg=CFG, positions=tb["positions"],
                     segment_ids=tb["segment_ids"])
    return nll_sum(logits, tb)[0] / m["tokens"]
  np.testing.assert_allclose(float(m["lm_loss"]), float(loss(masks)), rtol=1e-5)
  g_mask = jax.grad(loss)(masks)
  for g in la:
    slope = jax.vmap(jax.grad(hard_concrete.deterministic_score))(la[g].ravel())
    want = la[g] - g_mask[g] * slope.reshape(la[g].shape)  # one SGD step at lr 1
    dropped = np.asarray(masks[g]) == 0
    if g == "intermediate":  # a dropped hidden channel is masked where it is written and
      # where it is read, so its slope at 0 is 0; a dropped MLP unit's is not
      assert dropped.any() and np.abs(np.asarray(g_mask[g]))[dropped].min() > 0
    np.testing.assert_allclose(np.asarray(new["prune"].log_alpha[g]), np.asarray(want),
                               rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="gate_forward"):
    make_train_step(CFG, optax.sgd(1.0), gates=True, gate_forward="hard")
