"""Learned pruning state: gate logits and Lagrange multipliers, plus static target metadata.

Leaves (trained): log_alpha, lambda1, lambda2, each {group: array}. Everything else is static
pytree metadata, so jax.grad / optax see only the arrays and jit caches on the target.
An optimizer can label leaves by field (log_alpha: descent; lambda1/lambda2: ascent).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import struct

from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.model.masks import MASK_NAMES, mask_shapes
from jshear.prune import hard_concrete
from jshear.prune.deterministic import deterministic_masks
from jshear.prune.targets import TargetShape, validate_target

CONSTRAINTS = ("per_layer", "count")
# Groups whose gates are [L, n]: constrained per layer in "per_layer" mode.
ROW_GROUPS = ("head", "kv", "intermediate")


@struct.dataclass
class PruneState:
  log_alpha: dict
  lambda1: dict
  lambda2: dict
  src: ModelConfig = struct.field(pytree_node=False)
  target: TargetShape = struct.field(pytree_node=False)
  constraint: str = struct.field(pytree_node=False, default="per_layer")

  @property
  def groups(self) -> tuple[str, ...]:
    """Groups in MASK_NAMES order (pytree ops hand dicts back with sorted keys)."""
    return tuple(g for g in MASK_NAMES if g in self.log_alpha)


def lambda_shape(src: ModelConfig, group: str, constraint: str) -> tuple[int, ...]:
  """[L] for row groups under "per_layer" (one multiplier per layer), scalar otherwise."""
  return (src.num_layers,) if constraint == "per_layer" and group in ROW_GROUPS else ()


def init_prune_state(src: ModelConfig, target: TargetShape, groups: Sequence[str],
                     rng: jax.Array, constraint: str = "per_layer",
                     mean: float = 5.0, std: float = 0.01) -> PruneState:
  """Fresh state: log_alpha ~ N(mean, std) then clamped (model intact), lambdas zero."""
  if constraint not in CONSTRAINTS:
    raise JShearError(f"prune constraint must be one of {CONSTRAINTS}, got {constraint!r}")
  validate_target(src, target, groups)
  # Canonical order so the same groups in any order give the same pytree and rngs.
  groups = tuple(g for g in MASK_NAMES if g in groups)
  log_alpha, lambda1, lambda2 = _init_arrays(src, groups, constraint, rng, mean, std)
  return PruneState(log_alpha, lambda1, lambda2, src=src, target=target, constraint=constraint)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 4, 5))
def _init_arrays(src, groups, constraint, rng, mean, std):
  # One compile instead of a dozen eager ops.
  shapes = mask_shapes(src)
  log_alpha, lambda1, lambda2 = {}, {}, {}
  for g in groups:
    k = jax.random.fold_in(rng, MASK_NAMES.index(g))
    log_alpha[g] = hard_concrete.init_log_alpha(shapes[g], k, mean, std)
    lambda1[g] = jnp.zeros(lambda_shape(src, g, constraint), jnp.float32)
    lambda2[g] = jnp.zeros(lambda_shape(src, g, constraint), jnp.float32)
  return hard_concrete.clamp_log_alpha(log_alpha), lambda1, lambda2


def sample_masks(state: PruneState, rng: jax.Array, step) -> dict:
  """One hard-concrete sample per group for training step `step`.

  The key is fold_in(rng, step), identical on every data-parallel shard, so one mask
  multiplies the whole global batch: one sample per step, as in the paper, and a run that
  does not depend on the device count. (The reference seeds each rank differently, so its
  masks and results change with the number of GPUs.)
  """
  rng = jax.random.fold_in(rng, step)
  return {g: hard_concrete.sample(la, jax.random.fold_in(rng, MASK_NAMES.index(g)))
          for g, la in state.log_alpha.items()}


def eval_masks(state: PruneState) -> dict:
  """Deterministic masks with exactly the target kept, kept entries at their soft score."""
  return deterministic_masks(state, state.src, state.target)


def probs(state: PruneState) -> dict:
  """P(z != 0) per gate."""
  return jax.tree.map(hard_concrete.prob_nonzero, state.log_alpha)
