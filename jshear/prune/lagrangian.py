"""Lagrangian sparsity penalty that drives the expected model size to the target.

For each group with expected sparsity s and (warmed-up) target sparsity t:
  penalty += lambda1 * (s - t) + lambda2 * (s - t)^2
Minimised over log_alpha, maximised over lambda1/lambda2 (the optimizer does the ascent; the
gradient w.r.t. lambda1 is just s - t).

Constraint modes (PruneState.constraint):
  layer_mean (default, the reference code's form): for [L, n] groups (head, kv,
    intermediate) s is each layer's sparsity fraction, one scalar lambda pair per group,
    and the per-layer terms are averaged over layers, so every layer is pushed to the same
    shape and d penalty / d lambda1 = mean_l (s_l - t).
  per_layer: as layer_mean but one multiplier pair per layer and the terms summed (each
    layer's row gates feel L times the pressure; each layer's lambda acts on its own).
  count (the paper's form): one scalar lambda pair per group on the total expected count.
`layer` and `hidden` are one global constraint in every mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jshear.prune.expected import expected_params, expected_sizes, prunable_params
from jshear.prune.state import ROW_GROUPS, PruneState, expected_sparsity, probs
from jshear.prune.targets import kept_sizes, source_sizes, target_config


def warmup_sparsity(final, step, warmup_steps: int, start=0.0):
  """t(step) = start + (final - start) * min(1, step / warmup_steps): from where the masks
  start (0 = the intact source) to the target."""
  if warmup_steps <= 0:
    return jnp.asarray(final, jnp.float32) + 0.0 * jnp.asarray(start, jnp.float32)
  frac = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)
  start = jnp.asarray(start, jnp.float32)
  return start + (jnp.float32(final) - start) * frac


def target_sparsity(state: PruneState, step, warmup_steps: int) -> dict:
  """Per group, the warmed-up target sparsity at `step` (shaped like its constraint)."""
  n_src = source_sizes(state.src, state.groups)
  n_kept = kept_sizes(state.src, state.target, state.groups)
  return {g: warmup_sparsity(1.0 - n_kept[g] / n_src[g], step, warmup_steps,
                             state.start_sparsity[g]) for g in state.groups}


def lagrangian(state: PruneState, step, warmup_steps: int) -> tuple[jax.Array, dict]:
  """(penalty, diagnostics) at training step `step` (may be traced)."""
  src, groups = state.src, state.groups
  p = probs(state)
  sizes = expected_sizes(p)
  n_src, n_kept = source_sizes(src, groups), kept_sizes(src, state.target, groups)
  L = src.num_layers
  sparsity = expected_sparsity(state)
  penalty = jnp.float32(0.0)
  diag = {}
  for g in groups:
    n = n_src[g]
    t = warmup_sparsity(1.0 - n_kept[g] / n, step, warmup_steps, state.start_sparsity[g])
    s = sparsity[g]
    gap = s - t
    terms = state.lambda1[g] * gap + state.lambda2[g] * gap ** 2
    reduce = jnp.mean if state.constraint == "layer_mean" else jnp.sum
    penalty = penalty + reduce(terms)
    total = L * n if g in ROW_GROUPS else n
    diag.update({
        f"prune/{g}/expected_size": jnp.sum(sizes[g]),
        f"prune/{g}/target_size": jnp.mean(1.0 - t) * total,
        f"prune/{g}/expected_sparsity": jnp.mean(s),
        f"prune/{g}/target_sparsity": jnp.mean(t),
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
