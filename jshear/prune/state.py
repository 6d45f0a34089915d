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
import numpy as np
from flax import struct

from jshear.config_check import CONSTRAINTS  # noqa: F401 (defined there, re-exported)
from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.model.masks import MASK_NAMES, mask_shapes
from jshear.prune import hard_concrete
from jshear.prune.deterministic import deterministic_masks
from jshear.prune.expected import expected_sizes
from jshear.prune.targets import TargetShape, source_sizes, validate_target

# layer_mean (default, the reference code's form): one scalar multiplier pair per group, the
#   per-layer penalty averaged over layers (every layer pushed to the same shape);
# per_layer: one multiplier pair per layer for [L, n] groups, the penalty summed over layers;
# count (the paper's form): one scalar pair per group on the total expected count.
# (CONSTRAINTS, these names, is defined in jshear.config_check.)

# Groups whose gates are [L, n]: constrained per layer in "per_layer" mode.
ROW_GROUPS = ("head", "kv", "intermediate")


@struct.dataclass
class PruneState:
  log_alpha: dict
  lambda1: dict
  lambda2: dict
  # What the clamp to [ln 0.01, ln 100] cut off log_alpha, summed over steps: log_alpha +
  # clamp_excess is the unclamped value, which breaks ties at the bounds by what was learned.
  # Not trained (the optimizer leaves it alone); updated where the clamp is applied.
  clamp_excess: dict
  # Expected sparsity the target warm-up starts from (per group, shaped like the constraint):
  # 0 for the reference's intact start, the initial expected sparsity for masks initialised
  # from scores. Not trained.
  start_sparsity: dict
  src: ModelConfig = struct.field(pytree_node=False)
  target: TargetShape = struct.field(pytree_node=False)
  constraint: str = struct.field(pytree_node=False, default="layer_mean")
  # The clamp on log_alpha. The reference's [ln 0.01, ln 100] leaves a gate at the upper
  # bound fractional in ~5% of samples and one at the lower bound non-zero in ~5%; wider
  # bounds let settled gates be (nearly) deterministic.
  bounds: tuple = struct.field(pytree_node=False,
                               default=(hard_concrete.LOG_ALPHA_MIN, hard_concrete.LOG_ALPHA_MAX))
  # Deterministic masks keep units at 1, not at their soft score (prune.learned.gate_forward=
  # deterministic: the forward trains on them, and a band unit kept at score 0.5 would be
  # half a unit in every step).
  binary_masks: bool = struct.field(pytree_node=False, default=False)

  def clamped(self, new_log_alpha: dict) -> "PruneState":
    """This state with `new_log_alpha` clamped, the part cut off added to clamp_excess."""
    clamped = hard_concrete.clamp_log_alpha(new_log_alpha, self.bounds)
    excess = jax.tree.map(lambda e, a, c: e + (a - c), self.clamp_excess, new_log_alpha, clamped)
    return self.replace(log_alpha=clamped, clamp_excess=excess)

  def ranking(self) -> dict:
    """The unclamped logits: what deterministic masks rank by."""
    return jax.tree.map(jnp.add, self.log_alpha, self.clamp_excess)

  @property
  def groups(self) -> tuple[str, ...]:
    """Groups in MASK_NAMES order (pytree ops hand dicts back with sorted keys)."""
    return tuple(g for g in MASK_NAMES if g in self.log_alpha)


def lambda_shape(src: ModelConfig, group: str, constraint: str) -> tuple[int, ...]:
  """[L] for row groups under "per_layer" (one multiplier per layer), scalar otherwise."""
  return (src.num_layers,) if constraint == "per_layer" and group in ROW_GROUPS else ()


def init_prune_state(src: ModelConfig, target: TargetShape, groups: Sequence[str],
                     rng: jax.Array, constraint: str = "layer_mean",
                     mean: float = 5.0, std: float = 0.01,
                     log_alpha: dict | None = None, bounds=None,
                     binary_masks: bool = False) -> PruneState:
  """Fresh state: log_alpha ~ N(mean, std) then clamped (model intact), or the given
  `log_alpha` (e.g. from importance scores, `jshear.prune.mask_init`); lambdas zero."""
  bounds = (hard_concrete.LOG_ALPHA_MIN, hard_concrete.LOG_ALPHA_MAX) if bounds is None else \
      (float(bounds[0]), float(bounds[1]))
  if not bounds[0] < bounds[1]:
    raise JShearError(f"config.prune.learned.log_alpha_bounds must be (low, high) with "
                      f"low < high, got {bounds}")
  if constraint not in CONSTRAINTS:
    raise JShearError(f"config.prune.learned.constraint must be one of {CONSTRAINTS}, got "
                      f"{constraint!r}")
  validate_target(src, target, groups)
  # Canonical order so the same groups in any order give the same pytree and rngs.
  groups = tuple(g for g in MASK_NAMES if g in groups)
  la, lambda1, lambda2 = _init_arrays(src, groups, constraint, rng, mean, std)
  la = hard_concrete.clamp_log_alpha(la, bounds)
  if log_alpha is not None:
    shapes = mask_shapes(src)
    for g in groups:
      if g not in log_alpha or tuple(np.shape(log_alpha[g])) != shapes[g]:
        raise JShearError(f"initial log_alpha for group {g!r}: expected shape {shapes[g]}, got "
                          f"{np.shape(log_alpha[g]) if g in log_alpha else 'nothing'}")
    la = hard_concrete.clamp_log_alpha({g: jnp.asarray(log_alpha[g], jnp.float32)
                                        for g in groups}, bounds)
  excess = jax.tree.map(jnp.zeros_like, la)
  state = PruneState(la, lambda1, lambda2, excess, {}, src=src, target=target,
                     constraint=constraint, bounds=tuple(bounds), binary_masks=binary_masks)
  start = expected_sparsity(state)  # shaped like the constraint: [L] or scalar per group
  if log_alpha is None:
    start = jax.tree.map(jnp.zeros_like, start)
  return state.replace(start_sparsity=start)


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
  return log_alpha, lambda1, lambda2


def sample_masks(state: PruneState, rng: jax.Array, step, micro=0) -> dict:
  """One hard-concrete sample per group for micro-batch `micro` of training step `step`.

  One sample per forward pass, as in the reference: the key is fold_in(fold_in(rng, step),
  micro), so micro-batches draw different gates while every data-parallel shard of one
  micro-batch draws the same ones, and a run does not depend on the device count. (The
  reference seeds each rank differently, so its masks change with the number of GPUs.)
  """
  rng = jax.random.fold_in(jax.random.fold_in(rng, step), micro)
  return {g: hard_concrete.sample(la, jax.random.fold_in(rng, MASK_NAMES.index(g)))
          for g, la in state.log_alpha.items()}


def straight_through_masks(state: PruneState) -> dict:
  """prune.learned.gate_forward=deterministic: the forward uses the deterministic masks finalize
  would keep now (eval_masks: exactly the target, no noise), and the gradient reaches every
  gate logit through the soft score sigmoid(0.8 log_alpha / beta), straight through the
  top-k cut: an entry's gradient is the loss's slope in its mask value times the score's
  slope, for a dropped unit the slope for switching it on (with the source's weights). The
  pipeline pairs it with binary_masks, so the weights train the whole units they will keep,
  while gates near the cut still reorder by what the loss says. (A dropped hidden channel gets no
  gradient: the mask scales it where it is written and where it is read, so the loss is
  flat in it at 0; mask_init.check_config refuses a band on hidden channels for that reason.
  Dropped MLP units, heads, KV groups and layers do get one, except units inside a dropped
  layer: their scales include the layer's mask, so at 0 they are flat too.)"""
  hard = eval_masks(state)
  soft = jax.tree.map(hard_concrete.deterministic_score, state.log_alpha)
  return {g: jax.lax.stop_gradient(hard[g]) + soft[g] - jax.lax.stop_gradient(soft[g])
          for g in hard}


def binary_groups(src: ModelConfig) -> tuple[str, ...]:
  """Groups whose deterministic masks keep units at 1 rather than their soft score: the
  hidden mask of a tied source, so that finalize keeps the embedding tied (a soft hidden
  mask would scale the input embedding but not the LM head) and the finalized model is
  the one evaluated at the end of pruning."""
  return ("hidden",) if src.tie_embeddings else ()


def eval_masks(state: PruneState) -> dict:
  """Deterministic masks with exactly the target kept, kept entries at their soft score or
  1 (PruneState.binary_masks), ranked by the unclamped logits (PruneState.clamp_excess)."""
  return deterministic_masks(state.ranking(), state.src, state.target,
                             binary=state.binary_masks, soft_from=state.log_alpha,
                             binary_groups=binary_groups(state.src))


def kept_units(state: PruneState) -> dict:
  """{group: bool numpy array}: which units the deterministic masks keep now. Pass a host
  copy of the state (the pruning loop counts how many units change sides between logs)."""
  return {g: np.asarray(m) > 0 for g, m in
          deterministic_masks(state.ranking(), state.src, state.target, binary=True).items()}


def probs(state: PruneState) -> dict:
  """P(z != 0) per gate."""
  return jax.tree.map(hard_concrete.prob_nonzero, state.log_alpha)


def expected_sparsity(state: PruneState) -> dict:
  """Per group, the expected sparsity the constraint compares with its target: [L] for row
  groups under layer_mean / per_layer, a scalar otherwise."""
  sizes = expected_sizes(probs(state))
  n_src = source_sizes(state.src, state.groups)
  out = {}
  for g in state.groups:
    n = n_src[g]
    if g in ROW_GROUPS and state.constraint in ("layer_mean", "per_layer"):
      out[g] = 1.0 - sizes[g] / n                   # [L]
    elif g in ROW_GROUPS:
      out[g] = 1.0 - jnp.sum(sizes[g]) / (state.src.num_layers * n)
    else:                                           # layer, hidden: global
      out[g] = 1.0 - jnp.sum(sizes[g]) / n
  return out
