"""Iterative pruning while the weights train: 0/1 masks that the training loop replaces on a
schedule (they live in the train state, so checkpoints and exact resume cover them).

  dimchop    (prune.method=dimchop) Every `prune.dimchop.every` steps, starting at step 0,
             every unit of the prune groups is re-scored by activation importance
             (`jshear.prune.importance` on the calibration rows; layers by Block Importance)
             on the *unmasked* model, so units masked earlier compete again, and the top units
             are kept. Kept sizes shrink linearly from the source to the target over the first
             `prune.dimchop.end_fraction` of the steps; the last re-scoring reaches the target
             exactly and the masks stay fixed from then on. Until that last re-scoring, masked
             units keep training through a straight-through gradient (weight
             `prune.dimchop.straight_through`, see `jshear.model.layers.apply_mask`); after it,
             the model trains as the exact target-shaped network.
  layerchop  (prune.method=layerchop with prune.layerchop.every > 0) Widths shrink once at
             step 0 (`prune.layerchop.width`, as in one-shot LayerCHOP); the layout's layers
             are dropped one at a time, one every `prune.layerchop.every` steps from step 0,
             in increasing layer order.

The stage's final masks are 0/1 at the target shape; finalize slices them like any method's.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.prune.deterministic import deterministic_masks
from jshear.prune.targets import TargetShape


def _shrink(src: int, tgt: int, frac: float) -> int:
  return int(src - round((src - tgt) * frac))


def intermediate_target(src: ModelConfig, tgt: TargetShape, groups, frac: float) -> TargetShape:
  """The shape `frac` (0..1) of the way from the source to the target, with heads kept in
  whole KV groups of equal size (frac=1 is exactly `tgt`)."""
  if src.group_size == 1 and "kv" not in groups:  # MHA, heads are their own groups
    h = _shrink(src.num_heads, tgt.num_heads, frac)
    kv, heads = h, h
  else:
    kv = _shrink(src.num_kv_heads, tgt.num_kv_heads, frac)
    heads = kv * _shrink(src.group_size, tgt.group_size, frac)
  return TargetShape(_shrink(src.num_layers, tgt.num_layers, frac), heads, kv,
                     _shrink(src.hidden_size, tgt.hidden_size, frac),
                     _shrink(src.intermediate_size, tgt.intermediate_size, frac))


@dataclasses.dataclass
class MaskSchedule:
  """When and how the masks change. `masks_at(step, params)` gives (masks, ste) at the steps
  where they change (before that step runs) and None elsewhere."""
  src: ModelConfig
  target: TargetShape
  groups: tuple
  every: int
  last_step: int                                 # the last step whose masks are new
  scorer: Callable | None = None                 # dimchop: params -> {group: scores}
  ste: float = 0.0
  width_masks: dict | None = None                # layerchop: fixed from step 0
  layer_order: tuple = ()                        # layerchop: layers, in drop order

  def steps(self) -> list[int]:
    return list(range(0, self.last_step + 1, self.every))

  def masks_at(self, step: int, params) -> tuple[dict, float] | None:
    if step > self.last_step or step % self.every:
      return None
    r, rounds = step // self.every, self.last_step // self.every + 1
    if self.scorer is None:  # gradual LayerCHOP: one more layer gone
      layer = np.ones((self.src.num_layers,), np.float32)
      layer[list(self.layer_order[:r + 1])] = 0.0
      return {**self.width_masks, "layer": layer}, 0.0
    shape = intermediate_target(self.src, self.target, self.groups, (r + 1) / rounds)
    scores = self.scorer(params)
    masks = deterministic_masks({g: np.asarray(scores[g]) for g in self.groups}, self.src,
                                shape, binary=True)
    return ({g: np.asarray(m, np.float32) for g, m in masks.items()},
            self.ste if r + 1 < rounds else 0.0)


def dimchop_schedule(cfg, src: ModelConfig, target: TargetShape, groups, scorer) -> MaskSchedule:
  """DimCHOP's schedule from the run config (`cfg.prune`); `scorer(params)` re-scores."""
  p = cfg.prune
  d = p.dimchop
  every, frac, steps = int(d.every), float(d.end_fraction), int(p.steps)
  check_dimchop(p)
  last = max(0, int(frac * steps) - 1)
  last -= last % every
  return MaskSchedule(src, target, tuple(groups), every, last, scorer=scorer,
                      ste=float(d.straight_through))


def check_dimchop(p) -> None:
  """Up-front checks of the prune block `p`'s DimCHOP keys (p.dimchop)."""
  p = p.dimchop
  if int(p.every) <= 0:
    raise JShearError(f"prune.dimchop.every must be a positive number of steps, got "
                      f"{p.every}")
  if not 0.0 < float(p.end_fraction) <= 1.0:
    raise JShearError(f"prune.dimchop.end_fraction must be in (0, 1], got "
                      f"{p.end_fraction}")
  if not 0.0 <= float(p.straight_through) <= 1.0:
    raise JShearError(f"prune.dimchop.straight_through must be in [0, 1], got "
                      f"{p.straight_through}")


def layerchop_schedule(src: ModelConfig, target: TargetShape, groups, every: int, steps: int,
                       dropped: list[int], width_masks: dict) -> MaskSchedule:
  """Gradual LayerCHOP: `dropped` (the layout's layers) go one every `every` steps."""
  check_layerchop(every, steps, len(dropped))
  last = (len(dropped) - 1) * every if dropped else 0
  widths = {g: np.asarray(m, np.float32) for g, m in width_masks.items() if g != "layer"}
  return MaskSchedule(src, target, tuple(groups), every, last, width_masks=widths,
                      layer_order=tuple(sorted(dropped)))


def check_layerchop(every: int, steps: int, n_drop: int) -> None:
  if every <= 0:
    raise JShearError(f"prune.layerchop.every must be positive for gradual LayerCHOP, got {every}")
  if n_drop and (n_drop - 1) * every >= steps:
    raise JShearError(
        f"gradual LayerCHOP drops {n_drop} layers, one every prune.layerchop.every={every} "
        f"steps, so the last drop is at step {(n_drop - 1) * every}, but prune.steps={steps}: "
        f"raise prune.steps above {(n_drop - 1) * every} or lower prune.layerchop.every")
