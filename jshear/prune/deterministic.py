"""Deterministic end-of-pruning masks that keep exactly the target shape.

Ranking uses the given logits (learned pruning passes the unclamped ones, so values that
the clamp made equal are ordered by what was learned); exactly equal values are the only
ties, and they go to the lower index. Kept entries carry their soft score (folded into the
weights later) or 1 with binary=True; dropped entries are 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.model.masks import mask_shapes
from jshear.prune import hard_concrete
from jshear.prune.targets import TargetShape, kept_sizes


def keep_top(log_alpha: jax.Array, keep: int) -> jax.Array:
  """0/1 mask of the `keep` largest entries along the last axis (ties: lower index wins)."""
  order = jnp.argsort(-log_alpha, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1, stable=True)
  return (rank < keep).astype(jnp.float32)


def deterministic_masks(log_alpha, src: ModelConfig, target: TargetShape,
                        binary: bool = False, soft_from: dict | None = None,
                        binary_groups=()) -> dict:
  """Masks from a PruneState or a {group: logits} dict, keeping exactly `target`.

  Kept entries get the soft score of `soft_from` (default: the logits themselves), or 1
  for every group with binary=True and for the groups in `binary_groups`.

  layer / hidden: the top-k globally; intermediate: the top-k of each layer; kv: the top
  target-kv groups of each layer; head: inside every kept group the top (target heads per
  group), so all kept groups keep the same number of query heads (MHA source without `kv`:
  the top target-heads of each layer). `target` counts must be static Python ints.
  """
  if hasattr(log_alpha, "ranking"):  # a PruneState
    soft_from = log_alpha.log_alpha if soft_from is None else soft_from
    log_alpha = log_alpha.ranking()
  groups = tuple(log_alpha)
  kept = kept_sizes(src, target, groups)
  shapes = mask_shapes(src)
  for g, la in log_alpha.items():
    if tuple(la.shape) != shapes[g]:
      raise JShearError(f"log_alpha[{g!r}] has shape {tuple(la.shape)}, expected {shapes[g]}")

  keep = {}
  for g in ("layer", "hidden", "intermediate", "kv"):
    if g in log_alpha:
      keep[g] = keep_top(log_alpha[g], kept[g])
  if "head" in log_alpha:
    la = log_alpha["head"]
    if src.group_size == 1 and "kv" not in log_alpha:
      keep["head"] = keep_top(la, kept["head"])
    else:
      L, KV, G = src.num_layers, src.num_kv_heads, src.group_size
      within = keep_top(la.reshape(L, KV, G), target.group_size)
      if "kv" in keep:  # heads of dropped groups are dropped too, so `head` alone is exact
        within = within * keep["kv"][:, :, None]
      keep["head"] = within.reshape(L, src.num_heads)

  if binary:
    return {g: keep[g] for g in groups}
  soft = log_alpha if soft_from is None else soft_from
  return {g: keep[g] if g in binary_groups else
          keep[g] * hard_concrete.deterministic_score(soft[g]) for g in groups}
