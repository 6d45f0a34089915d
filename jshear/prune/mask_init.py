"""Learned masks that start from a ranking (prune.mask_init=importance), not from an intact
model with every gate equal.

With every gate at the same logit, the first hundreds of steps are spent discovering what
one forward pass of activation statistics already says, and on a small budget the gates
move before they know where to go (REFERENCE.md §6). Here each gate starts from its unit's
rank in importance scores: units the scores keep start at the upper clamp bound, the rest
fall linearly with rank, by `spread` nats from the bound at the cut to the least important
unit. The target warm-up then starts from the expected sparsity this gives, and the gates
refine the ranking while the weights adapt.
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
  falling score: 1/k for the best of k, ..., 1 for the worst; 0 for kept units."""
  s = np.where(dropped, scores, np.inf)
  order = np.argsort(-s, axis=-1, kind="stable")     # kept first, then dropped best to worst
  rank = np.argsort(order, axis=-1, kind="stable")
  n_kept = np.sum(~dropped, axis=-1, keepdims=True)
  n_drop = np.maximum(np.sum(dropped, axis=-1, keepdims=True), 1)
  return np.where(dropped, (rank - n_kept + 1) / n_drop, 0.0)


def from_scores(src, target: TargetShape, scores: dict, spread: float,
                hi: float = hard_concrete.LOG_ALPHA_MAX) -> dict:
  """{group: log_alpha} from importance scores (higher = more important); kept units at
  `hi` (the upper clamp bound)."""
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
    out[g] = (hi - spread * frac).astype(np.float32)
  return out
