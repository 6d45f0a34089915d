"""Size control by projection (prune.learned.size_control=projection): after every update, shift
each constrained set of gate logits by one scalar so that its expected size is exactly the
warmed-up target.

The Lagrangian steers sizes through multipliers that Adam moves by about their learning
rate per step whatever the gap, so on budgets of tens of steps the sizes swing far past the
target before the multipliers turn (measured on the tiny world and the demo: the README).
The projection removes that loop: the LM gradient decides the order of the gates inside a
set, the shift decides how many survive, and a uniform shift never changes that order.
Sets are those the constraint compares with its target (each layer's row of a [L, n]
group under layer_mean / per_layer; whole groups otherwise).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jshear.prune import hard_concrete
from jshear.prune.state import ROW_GROUPS, PruneState
from jshear.prune.targets import source_sizes

_ITERS = 40  # bisection steps: the shift's bracket of 4 * clamp range shrinks below 1e-10


def _per_row(state: PruneState, group: str) -> bool:
  return group in ROW_GROUPS and state.constraint in ("layer_mean", "per_layer")


def _size(la, shift, axis, bounds):
  """Expected kept count of the gates `la + shift` after the clamp."""
  clamped = jnp.clip(la + shift, *bounds)
  return jnp.sum(hard_concrete.prob_nonzero(clamped), axis=axis)


def _shift_for(la, want, axis, bounds):
  """The scalar (per row) b with _size(la, b) = want, by bisection (size rises with b)."""
  span = 2.0 * (bounds[1] - bounds[0])
  shape = jnp.shape(want)
  lo, hi = jnp.full(shape, -span), jnp.full(shape, span)
  expand = (lambda b: b[..., None]) if axis == -1 else (lambda b: b)

  def body(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    big = _size(la, expand(mid), axis, bounds) > want
    return jnp.where(big, lo, mid), jnp.where(big, mid, hi)

  lo, hi = jax.lax.fori_loop(0, _ITERS, body, (lo, hi))
  return expand(0.5 * (lo + hi))


def project(state: PruneState, target_sparsity: dict) -> PruneState:
  """`state` with each set's logits shifted to the expected size 1 - target_sparsity (the
  clamp applied after, its cut kept in clamp_excess as for any update)."""
  n_src = source_sizes(state.src, state.groups)
  shifted = {}
  for g, la in state.log_alpha.items():
    n, t = n_src[g], target_sparsity[g]
    if _per_row(state, g):
      b = _shift_for(la, (1.0 - t) * n, -1, state.bounds)
    elif g in ROW_GROUPS:
      b = _shift_for(la, (1.0 - t) * n * state.src.num_layers, None, state.bounds)
    else:
      b = _shift_for(la, (1.0 - t) * n, None, state.bounds)
    shifted[g] = la + b
  return state.clamped(shifted)
