"""Training the blocks of a blockwise recording (`jshear.blockwise`).

Every block's step is the one train step (`build_step`) with the normalised-MSE loss. All
blocks train at once as `vmap` of that step over a leading block axis, sharded over a 1-D
`block` mesh of the given devices, so N devices train N blocks at a time; `sequential=True`
runs the same step one block after another (the reference the parallel run is tested
against). Every step draws the same rows for every block, from a seeded generator.
"""

from __future__ import annotations

import typing

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jshear.blockwise import (Recording, device_assignment, block_groups, nmse_loss,
                              stack_states, unstack)
from jshear.checkpoint import Checkpointer, abstract_like
from jshear.optim import build_optimizer
from jshear.train.step import BATCH_KEYS, build_step, init_state


def row_draws(num_rows: int, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
  """The rows of each step: a fresh permutation per pass over the recording."""
  rng = np.random.default_rng(seed)
  out, order = [], np.empty(0, np.int64)
  for _ in range(steps):
    if len(order) < batch_size:
      order = np.concatenate([order, rng.permutation(num_rows)])
    out.append(order[:batch_size])
    order = order[batch_size:]
  return out


class Trained(typing.NamedTuple):
  layers: dict            # the trained blocks, stacked like the model's params["layers"]
  history: np.ndarray     # normalised MSE per step and block [steps, blocks]
  resumed_from: int       # the checkpointed step this call started at (0: from scratch)


def block_step(cfg, tc, steps: int, mode: str = "entire_block", eps: float = 1e-6):
  """One block's step: the one train step with the normalised-MSE loss. Returns (step,
  optimizer, groups)."""
  groups = block_groups(cfg, mode)
  opt = build_optimizer(tc, steps, groups)
  step = build_step(opt, nmse_loss(cfg, eps), groups=groups, batch_keys=BATCH_KEYS + ("x", "y"))
  return step, opt, groups


def block_states(layers, n: int, opt, groups, seed: int) -> list:
  """The initial train state of each of the n blocks (on the host)."""
  layers = jax.device_get(layers)   # off the run's mesh: the blocks get their own
  return [init_state(b, opt, seed * 1000 + j, groups=groups)
          for j, b in enumerate(unstack(layers, n))]


def block_layout(n: int, devices=None):
  """(mesh, sharding, pad) for n blocks on a 1-D `block` mesh of `devices` (default: all):
  the block axis padded by `pad` slots to ceil(n / devices) a device."""
  devices = list(devices or jax.devices())
  pad = len(device_assignment(n, len(devices))[0]) * len(devices) - n
  mesh = Mesh(np.array(devices), ("block",))
  return mesh, NamedSharding(mesh, P("block")), pad


def pad_blocks(tree, pad: int):
  """Copies of the last block fill the padded slots; their results are dropped."""
  return jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x,
                      tree)


def parallel_step(step, shard):
  """All blocks' step at once: vmap of one block's step over the sharded block axis."""
  return jax.jit(jax.vmap(step), in_shardings=(shard, shard), out_shardings=(shard, shard))


def train_blocks(cfg, layers, rec: Recording, tc, *, steps: int, batch_size: int,
                 seed: int = 0, mode: str = "entire_block", devices=None,
                 sequential: bool = False, eps: float = 1e-6, ckpt_dir: str | None = None,
                 ckpt_every: int = 0) -> Trained:
  """cfg: the pruned model's config; layers: its params["layers"]; tc: the stage block
  (lr, schedule, warmup_steps, weight_decay, b1, b2, eps, clip_norm). `ckpt_dir` (parallel
  runs only): save every `ckpt_every` steps and at the end, resume from the latest save."""
  n = rec.num_blocks
  if batch_size > rec.meta["rows"]:
    raise ValueError(f"batch of {batch_size} rows from a recording of {rec.meta['rows']}")
  step, opt, groups = block_step(cfg, tc, steps, mode, eps)
  states = block_states(layers, n, opt, groups, seed)
  draws = row_draws(rec.meta["rows"], batch_size, steps, seed)
  history = []
  if sequential:
    one = jax.jit(step)
    for idx in draws:
      batch = rec.batch(idx)
      losses = []
      for j in range(n):
        states[j], m = one(states[j], {k: v[j] for k, v in batch.items()})
        losses.append(float(m["lm_loss"]))
      history.append(losses)
    return Trained(stack_states([s["params"] for s in states]), np.asarray(history), 0)
  if ckpt_dir and ckpt_every < 1:
    raise ValueError(f"ckpt_every must be >= 1 with a ckpt_dir, got {ckpt_every}")
  mesh, shard, pad = block_layout(n, devices)
  ckpt = Checkpointer(ckpt_dir, keep_last=2) if ckpt_dir else None
  start = 0
  # checkpoints hold the n real blocks, replicated, so a run resumes on any device count
  whole = NamedSharding(mesh, P())
  try:
    with jax.set_mesh(mesh):   # its own mesh, inside a run's (data x fsdp x tensor) one
      state = stack_states(states)
      if ckpt is not None and ckpt.latest_step() is not None:
        state, extra = ckpt.restore(abstract_like(state, jax.tree.map(lambda _: whole, state)))
        start, history = int(extra["step"]), list(extra["history"])
      state = jax.device_put(pad_blocks(jax.device_get(state), pad), shard)
      run = parallel_step(step, shard)
      for i, idx in enumerate(draws[start:], start + 1):
        state, m = run(state, jax.device_put(pad_blocks(rec.batch(idx), pad), shard))
        history.append(np.asarray(m["lm_loss"])[:n].tolist())
        if ckpt is not None and (i % ckpt_every == 0 or i == steps):
          real = jax.device_put(jax.tree.map(lambda x: x[:n], state), whole)
          ckpt.save(i, real, {"step": i, "history": history})
      trained = jax.device_get(jax.tree.map(lambda x: x[:n], state["params"]))
  finally:
    if ckpt is not None:
      ckpt.close()
  return Trained(trained, np.asarray(history), start)
