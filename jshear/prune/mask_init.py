"""Learned masks that start from a ranking (prune.mask_init=importance), not from an intact
model with every gate equal.

With every gate at the same logit, a small budget is spent discovering what one forward
pass of activation statistics already says, and the gates move before they know where to
go (REFERENCE.md §6). Here the units the importance scores keep start at the upper clamp
bound, and the others start `spread` nats above the lower bound, falling with their rank to
the bound itself: the gap between the two sets lets one shift of every logit (the
projection, or the Lagrangian's pressure) size the mask without making kept units noisy,
and the best of the dropped units stay close enough to come back if the loss wants them.
With wide bounds (prune.log_alpha_bounds, e.g. (-10, 10)) kept gates are 1 and dropped
gates 0 in all but a few samples, so the pruning stage trains the sub-network it will keep.
"""

from __future__ import annotations

import numpy as np

from jshear.errors import JShearError
from jshear.prune import hard_concrete
from jshear.prune.deterministic import deterministic_masks
from jshear.prune.targets import TargetShape

MASK_INITS = ("uniform", "importance")


def check_config(p) -> None:
  from jshear.train.step import SIZE_CONTROLS
  if p.size_control not in SIZE_CONTROLS:
    raise JShearError(f"config.prune.size_control={p.size_control!r} (known: "
                      f"{list(SIZE_CONTROLS)})")
  if p.mask_init not in MASK_INITS:
    raise JShearError(f"config.prune.mask_init={p.mask_init!r} (known: {list(MASK_INITS)})")
  if not p.mask_init_spread > 0:
    raise JShearError(f"config.prune.mask_init_spread must be > 0, got {p.mask_init_spread}")


def _rank_fraction(scores: np.ndarray, dropped: np.ndarray) -> np.ndarray:
  """Per row (last axis), each dropped unit's place among the row's dropped units by
  falling score: 0 for the best of k, ..., 1 - 1/k for the worst; 0 for kept units."""
  s = np.where(dropped, scores, np.inf)
  order = np.argsort(-s, axis=-1, kind="stable")     # kept first, then dropped best to worst
  rank = np.argsort(order, axis=-1, kind="stable")
  n_kept = np.sum(~dropped, axis=-1, keepdims=True)
  n_drop = np.maximum(np.sum(dropped, axis=-1, keepdims=True), 1)
  return np.where(dropped, (rank - n_kept) / n_drop, 0.0)


def from_scores(src, target: TargetShape, scores: dict, spread: float,
                bounds=(hard_concrete.LOG_ALPHA_MIN, hard_concrete.LOG_ALPHA_MAX)) -> dict:
  """{group: log_alpha} from importance scores (higher = more important): kept units at the
  upper bound, dropped ones from lower bound + spread (the best) down to the lower bound."""
  lo, hi = bounds
  keep = deterministic_masks({g: np.asarray(v, np.float32) for g, v in scores.items()}, src,
                             target, binary=True)
  out = {}
  for g, s in scores.items():
    s = np.asarray(s, np.float64)
    dropped = np.asarray(keep[g]) == 0
    if s.ndim == 1:
      frac = _rank_fraction(s[None], dropped[None])[0]
    else:
      frac = _rank_fraction(s, dropped)
    out[g] = np.where(dropped, lo + spread * (1.0 - frac), hi).astype(np.float32)
  return out
