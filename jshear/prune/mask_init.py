"""Learned masks that start from a ranking (prune.learned.mask_init=importance), not from an
intact model with every gate equal.

With every gate at the same logit, a small budget is spent discovering what one forward
pass of activation statistics already says, and the gates move before they know where to
go (REFERENCE.md §6). Here the units the importance scores keep start at the upper clamp
bound, and the others start `spread` nats above the lower bound, falling with their rank to
the bound itself: the gap between the two sets lets one shift of every logit (the
projection, or the Lagrangian's pressure) size the mask without making kept units noisy,
and the best of the dropped units stay close enough to come back if the loss wants them.
With wide bounds kept gates are 1 and dropped gates 0 in all but a few samples, so the
pruning stage trains the sub-network it will keep. How wide matters: a gate is nonzero in
sigmoid(log_alpha + 1.6) of samples, so with bounds (-10, 10) the best dropped units (at
-10 + spread = -4) are on in 8% of them. Each time one is, the LM gradient lifts it, and
the projection's shift then lowers every logit, kept ones included. Over 120 demo-sized
steps that made ~1% of kept gates fractional in every sample and cost the band run 0.046
nats at the end (README, "The gap, controlled"); (-20, 20) keeps both sets silent.

That start never moves: a gate learns only in the samples where it is fractional, so after
tens of steps the learned masks are the importance masks (README). `band` > 0 puts the
units nearest the cut, where the scores are least sure, in transition: the lowest-scored
`band` fraction of each set's kept units and the same number of its best dropped units
start with logits from +band_width down to -band_width by rank (in the groups of
prune.learned.mask_init_band_groups: a fractional hidden channel scales the residual stream
in every layer, a fractional MLP unit one product). Those gates are fractional in a sizeable
share of samples, so the LM gradient can reorder them across the cut; the units the scores
are sure of stay settled. Sampled gates in transition also put noise into the forward the
weights train on; prune.learned.gate_forward=deterministic trains on the masks finalize
would keep and passes the gates' gradients straight through the cut instead
(jshear/prune/state.py).
"""

from __future__ import annotations

import numpy as np

from jshear.config_check import MASK_INITS  # noqa: F401 (defined there, re-exported)
from jshear.errors import JShearError
from jshear.prune import hard_concrete
from jshear.prune.deterministic import deterministic_masks
from jshear.prune.targets import TargetShape


def check_config(p) -> None:
  """Up-front checks of the prune block `p`'s learned keys (p.learned) against p.groups."""
  from jshear.prune.gates import GATE_FORWARDS, SIZE_CONTROLS
  lc = p.learned
  if lc.size_control not in SIZE_CONTROLS:
    raise JShearError(f"config.prune.learned.size_control={lc.size_control!r} (known: "
                      f"{list(SIZE_CONTROLS)})")
  if lc.gate_forward not in GATE_FORWARDS:
    raise JShearError(f"config.prune.learned.gate_forward={lc.gate_forward!r} (known: "
                      f"{list(GATE_FORWARDS)})")
  if lc.mask_init not in MASK_INITS:
    raise JShearError(f"config.prune.learned.mask_init={lc.mask_init!r} (known: "
                      f"{list(MASK_INITS)})")
  if not lc.mask_init_spread > 0:
    raise JShearError(f"config.prune.learned.mask_init_spread must be > 0, got "
                      f"{lc.mask_init_spread}")
  if not 0.0 <= lc.mask_init_band < 0.5:
    raise JShearError(f"config.prune.learned.mask_init_band must be in [0, 0.5), got "
                      f"{lc.mask_init_band}")
  unknown = set(band_groups(p) or ()) - set(str(p.groups).split(","))
  if unknown:
    raise JShearError(f"config.prune.learned.mask_init_band_groups names {sorted(unknown)}, "
                      f"not in config.prune.groups={p.groups!r}")
  if lc.gate_forward == "deterministic" and lc.mask_init == "uniform":
    raise JShearError("config.prune.learned.gate_forward='deterministic' needs "
                      "mask_init='importance': from the uniform start every gate ties at the "
                      "clamp, so the top-k cut would keep units by their index")
  groups = [g.strip() for g in str(p.groups).split(",") if g.strip()]
  banded = band_groups(p) or groups
  if (lc.gate_forward == "deterministic" and lc.mask_init == "importance"
      and lc.mask_init_band > 0 and "hidden" in banded):
    raise JShearError("config.prune.learned.mask_init_band puts hidden channels in the band "
                      "under gate_forward='deterministic', but a dropped hidden channel gets no "
                      "gradient there (its mask scales it where it is written and where it is "
                      "read), so it could leave and never come back; set "
                      "mask_init_band_groups to the other groups (e.g. 'intermediate')")
  lo, hi = (float(b) for b in lc.log_alpha_bounds)
  if not 0 < lc.mask_init_band_width < min(hi, -lo):
    raise JShearError(f"config.prune.learned.mask_init_band_width must be in "
                      f"(0, {min(hi, -lo)}) (inside config.prune.learned.log_alpha_bounds), "
                      f"got {lc.mask_init_band_width}")


def band_groups(p):
  """prune.learned.mask_init_band_groups of prune block `p` as a tuple, None for all
  groups ("")."""
  names = tuple(g.strip() for g in str(p.learned.mask_init_band_groups).split(",")
                if g.strip())
  return names or None


def _rank_fraction(scores: np.ndarray, dropped: np.ndarray) -> np.ndarray:
  """Per row (last axis), each dropped unit's place among the row's dropped units by
  falling score: 0 for the best of k, ..., 1 - 1/k for the worst; 0 for kept units."""
  s = np.where(dropped, scores, np.inf)
  order = np.argsort(-s, axis=-1, kind="stable")     # kept first, then dropped best to worst
  rank = np.argsort(order, axis=-1, kind="stable")
  n_kept = np.sum(~dropped, axis=-1, keepdims=True)
  n_drop = np.maximum(np.sum(dropped, axis=-1, keepdims=True), 1)
  return np.where(dropped, (rank - n_kept) / n_drop, 0.0)


def _band_row(s: np.ndarray, dropped: np.ndarray, band: float, width: float, la: np.ndarray):
  """Writes the band's logits into `la` (one set): the m lowest-scored kept units from
  +width down, then the m best dropped units down to -width (m = band * set size)."""
  kept_idx = np.flatnonzero(~dropped)
  drop_idx = np.flatnonzero(dropped)
  m = min(int(round(band * len(s))), len(kept_idx), len(drop_idx))
  if m == 0:
    return
  low_kept = kept_idx[np.argsort(s[kept_idx], kind="stable")][:m][::-1]   # best of them first
  best_drop = drop_idx[np.argsort(-s[drop_idx], kind="stable")][:m]
  steps = (np.arange(2 * m) + 0.5) / (2 * m)                              # (0, 1), by rank
  la[np.concatenate([low_kept, best_drop])] = width * (1.0 - 2.0 * steps)


def from_scores(src, target: TargetShape, scores: dict, spread: float,
                bounds=(hard_concrete.LOG_ALPHA_MIN, hard_concrete.LOG_ALPHA_MAX),
                band: float = 0.0, band_width: float = 3.0, band_groups=None) -> dict:
  """{group: log_alpha} from importance scores (higher = more important): kept units at the
  upper bound, dropped ones from lower bound + spread (the best) down to the lower bound;
  with `band` > 0 the units nearest the cut in between (module docstring), in the groups
  `band_groups` (None: all)."""
  lo, hi = bounds
  keep = deterministic_masks({g: np.asarray(v, np.float32) for g, v in scores.items()}, src,
                             target, binary=True)
  out = {}
  for g, s in scores.items():
    s = np.asarray(s, np.float64)
    dropped = np.asarray(keep[g]) == 0
    rows_s, rows_d = (s[None], dropped[None]) if s.ndim == 1 else (s, dropped)
    frac = _rank_fraction(rows_s, rows_d)
    la = np.where(rows_d, lo + spread * (1.0 - frac), hi)
    if band > 0 and (band_groups is None or g in band_groups):
      for i in range(len(la)):
        _band_row(rows_s[i], rows_d[i], band, band_width, la[i])
    out[g] = la.reshape(s.shape).astype(np.float32)
  return out


def check_reachable(p, src, target, groups) -> None:
  """size_control=projection shifts every gate of a group by one offset inside the clamp,
  so a group's expected kept fraction can only lie in [P(z != 0) at the lower bound, at the
  upper]; a target outside that range would leave the bisection saturated, silently."""
  from jshear.prune import hard_concrete
  from jshear.prune.targets import kept_sizes, source_sizes
  lc = p.learned
  if lc.size_control != "projection" or not groups:
    return
  lo, hi = (float(b) for b in lc.log_alpha_bounds)
  p_lo, p_hi = (float(hard_concrete.prob_nonzero(np.float32(b))) for b in (lo, hi))
  kept, full = kept_sizes(src, target, groups), source_sizes(src, groups)
  for g in groups:
    f = kept[g] / full[g]
    if not p_lo <= f <= p_hi:
      raise JShearError(
          f"config.prune.target keeps {kept[g]} of {full[g]} {g} units ({f:.4f}), which "
          f"size_control='projection' cannot reach inside log_alpha_bounds=({lo:g}, {hi:g}): "
          f"a group's expected kept fraction lies in [{p_lo:.4f}, {p_hi:.4f}]; widen the "
          f"bounds or change the target")
