"""Sharded train steps equal the single-device step; mesh and layout errors name numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jshear import sharding as shd
from jshear.config_base import base_config
from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.model.params import init_params
from jshear.prune.targets import TargetShape
from jshear.train import stages
from jshear.train.compile import stage_step
from jshear.train.loop import Context, PruneSpec
from jshear.model.state_sharding import put_global

CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8)
SPEC = PruneSpec(TargetShape(1, 2, 1, 16, 24), ("layer", "kv", "intermediate", "hidden"),
                 "per_layer", 2)


def _run(mesh_shape, steps=3):
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  mesh = shd.make_mesh(dict(zip(shd.MESH_AXES, mesh_shape)), devices=devices)
  cfg = base_config()
  block = cfg.prune
  block.batch_size, block.grad_accum, block.lr, block.warmup_steps = 8, 2, 1e-2, 1
  ctx = Context(cfg=cfg, workdir="", mesh=mesh, writer=None, data_dir="")
  plan = stage_step(ctx, stages.get("prune"), CFG, SPEC)
  make_state, prune_state, shardings = plan.make_state, plan.prune_state, plan.shardings
  params = jax.device_get(init_params(CFG, jax.random.key(0)))
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(steps):
    toks = rng.integers(0, 64, (8, 16)).astype(np.int32)
    seg = np.repeat(np.array([[1] * 10 + [2] * 6]), 8, axis=0).astype(np.int32)
    pos = np.repeat(np.array([list(range(10)) + list(range(6))]), 8, axis=0).astype(np.int32)
    batches.append({"tokens": toks, "segment_ids": seg, "positions": pos})
  step = plan.step
  with jax.set_mesh(mesh):
    state = jax.jit(make_state, out_shardings=shardings)(
        put_global(params, shardings["params"]), prune_state)
    losses = []
    for b in batches:
      state, m = step(state, shd.host_local_batch_to_global(b, mesh))
      losses.append(float(m["loss"]))
  wq = state["params"]["layers"]["wq"]
  return losses, jax.device_get(state["params"]), jax.device_get(state["prune"].log_alpha), wq


@pytest.fixture(scope="module")
def single():
  return _run((1, 1, 1))


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 4, 1), (1, 4, 2)])
def test_sharded_step_matches_single_device(single, mesh_shape):
  losses, params, log_alpha, wq = _run(mesh_shape)
  np.testing.assert_allclose(losses, single[0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(log_alpha), jax.tree.leaves(single[2])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # The weights really are distributed when the mesh has fsdp/tensor axes.
  if mesh_shape[1] > 1:
    assert wq.sharding.shard_shape(wq.shape) != wq.shape


def test_rules_shard_weights_and_replicate_what_does_not_divide():
  mesh = shd.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  assert shd.spec_for((2, 32, 4, 8), ("layers", "embed", "heads", "head_dim"), mesh) == \
      jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  # 3 KV heads do not divide over tensor=2: replicated rather than an error deep in XLA.
  assert shd.spec_for((2, 32, 3, 8), ("layers", "embed", "kv_heads", "head_dim"), mesh) == \
      jax.sharding.PartitionSpec(None, "fsdp", None, None)


def test_mesh_and_layout_errors_name_the_numbers():
  with pytest.raises(JShearError, match="8 devices do not divide"):
    shd.make_mesh({"data": 3, "fsdp": -1, "tensor": 1})
  with pytest.raises(JShearError, match="has 4 devices, but 8 are available"):
    shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 1})
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  with pytest.raises(JShearError, match=r"heads \(3\) must be divisible by mesh tensor size \(2\)"):
    shd.validate_layout(mesh, 8, 1, 3)
  with pytest.raises(JShearError, match="divisible by data x fsdp = 4"):
    shd.validate_layout(mesh, 6, 1, 4)
  with pytest.raises(JShearError, match=r"\(prune.batch_size / prune.grad_accum\)"):
    shd.validate_layout(mesh, 6, 1, 4, block="prune")
