"""Lagrangian sparsity penalty that drives the expected model size to the target.

For each group with expected sparsity s and (warmed-up) target sparsity t:
  penalty += lambda1 * (s - t) + lambda2 * (s - t)^2
Minimised over log_alpha, maximised over lambda1/lambda2 (the optimizer does the ascent; the
gradient w.r.t. lambda1 is just s - t).

Constraint modes (PruneState.constraint):
  per_layer (default, the reference code's form): for [L, n] groups (head, kv, intermediate)
    s is each layer's sparsity fraction, lambdas are [L] and the penalty sums over layers,
    so every layer is pushed to the same shape. (The reference shares one scalar lambda per
    group and averages the per-layer terms; one multiplier per layer lets a layer that lags
    get its own pressure and makes d penalty / d lambda1[l] = s_l - t.)
  count (the paper's form): one scalar lambda pair per group on the total expected count.
`layer` and `hidden` are one global constraint in both modes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jshear.prune.expected import expected_params, expected_sizes, prunable_params
from jshear.prune.state import ROW_GROUPS, PruneState, probs
from jshear.prune.targets import kept_sizes, source_sizes, target_config


def warmup_sparsity(final, step, warmup_steps: int):
  """t(step) = final * min(1, step / warmup_steps): from the source (0) to the target."""
  if warmup_steps <= 0:
    return jnp.asarray(final, jnp.float32)
  frac = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)
  return jnp.float32(final) * frac


def lagrangian(state: PruneState, step, warmup_steps: int) -> tuple[jax.Array, dict]:
  """(penalty, diagnostics) at training step `step` (may be traced)."""
  src, groups = state.src, state.groups
  p = probs(state)
  sizes = expected_sizes(p)
  n_src, n_kept = source_sizes(src, groups), kept_sizes(src, state.target, groups)
  L = src.num_layers
  penalty = jnp.float32(0.0)
  diag = {}
  for g in groups:
    n = n_src[g]
    t = warmup_sparsity(1.0 - n_kept[g] / n, step, warmup_steps)
    if g in ROW_GROUPS and state.constraint == "per_layer":
      s = 1.0 - sizes[g] / n                        # [L]
    elif g in ROW_GROUPS:
      s = 1.0 - jnp.sum(sizes[g]) / (L * n)
    else:                                           # layer, hidden: global
      s = 1.0 - jnp.sum(sizes[g]) / n
    gap = s - t
    penalty = penalty + jnp.sum(state.lambda1[g] * gap + state.lambda2[g] * gap ** 2)
    total = L * n if g in ROW_GROUPS else n
    diag.update({
        f"prune/{g}/expected_size": jnp.sum(sizes[g]),
        f"prune/{g}/target_size": (1.0 - t) * total,
        f"prune/{g}/expected_sparsity": jnp.mean(s),
        f"prune/{g}/target_sparsity": t,
        f"prune/{g}/max_abs_gap": jnp.max(jnp.abs(gap)),
        f"prune/{g}/lambda1": jnp.mean(state.lambda1[g]),
        f"prune/{g}/lambda2": jnp.mean(state.lambda2[g]),
    })
  full = float(prunable_params(src))  # python float: counts exceed int32 at 7B
  exp_params = expected_params(src, p)
  diag["prune/expected_params"] = exp_params
  diag["prune/target_params"] = jnp.float32(prunable_params(target_config(src, state.target)))
  diag["prune/expected_param_sparsity"] = 1.0 - exp_params / full
  return penalty, diag
