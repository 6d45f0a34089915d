"""Training the blocks of a blockwise recording (`jshear.blockwise`).

Every block's step is the one train step (`build_step`) with the normalised-MSE loss. All
blocks train at once as `vmap` of that step over a leading block axis, sharded over a 1-D
`block` mesh of the given devices, so N devices train N blocks at a time; `sequential=True`
runs the same step one block after another (the reference the parallel run is tested
against). Every step draws the same rows for every block, from a seeded generator.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jshear.blockwise import (Recording, device_assignment, block_groups, nmse_loss,
                              stack_states, unstack)
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


def train_blocks(cfg, layers, rec: Recording, tc, *, steps: int, batch_size: int,
                 seed: int = 0, mode: str = "entire_block", devices=None,
                 sequential: bool = False, eps: float = 1e-6):
  """(trained layers, stacked like `layers`; per-step normalised MSE [steps, blocks]).
  cfg: the pruned model's config; layers: its params["layers"]; tc: the stage block
  (lr, schedule, warmup_steps, weight_decay, b1, b2, eps, clip_norm)."""
  n = rec.num_blocks
  if batch_size > rec.meta["rows"]:
    raise ValueError(f"batch of {batch_size} rows from a recording of {rec.meta['rows']}")
  groups = block_groups(cfg, mode)
  opt = build_optimizer(tc, steps, groups)
  step = build_step(opt, nmse_loss(cfg, eps), groups=groups, batch_keys=BATCH_KEYS + ("x", "y"))
  layers = jax.device_get(layers)   # off the run's mesh: the blocks get their own
  states = [init_state(b, opt, seed * 1000 + j, groups=groups)
            for j, b in enumerate(unstack(layers, n))]
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
    trained = stack_states([s["params"] for s in states])
  else:
    devices = list(devices or jax.devices())
    slots = len(device_assignment(n, len(devices))[0]) * len(devices)
    pad = slots - n   # copies of the last block fill the slots; their results are dropped
    mesh = Mesh(np.array(devices), ("block",))
    shard = NamedSharding(mesh, P("block"))
    with jax.set_mesh(mesh):   # its own mesh, inside a run's (data x fsdp x tensor) one
      state = jax.device_put(stack_states(states + [states[-1]] * pad), shard)
      run = jax.jit(jax.vmap(step), in_shardings=(shard, shard), out_shardings=(shard, shard))
      for idx in draws:
        batch = rec.batch(idx)
        batch = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) if pad else v
                 for k, v in batch.items()}
        state, m = run(state, jax.device_put(batch, shard))
        history.append(np.asarray(m["lm_loss"])[:n].tolist())
      trained = jax.device_get(jax.tree.map(lambda x: x[:n], state["params"]))
  return trained, np.asarray(history)
