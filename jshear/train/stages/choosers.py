"""Ways to choose masks: the prune stage runs one, and every one ends in the same finalize.

A chooser has
  validate(cfg, src, target)  config checks that fail before anything is written;
  trains(cfg)                 whether the prune stage trains the weights along with the masks
                              (finalize then starts from the prune stage's last weights);
  choose(ctx, model, stage) -> masks  the masks to finalize (learned soft values or 0/1);
                              `stage` is the prune stage's declaration, for training.
To add a method: write a Chooser and add it to CHOOSERS.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable

import numpy as np

from jshear import sharding as shd
from jshear.config_check import LAYERCHOP_WIDTHS as _WIDTH_METHODS  # prune.layerchop.width
from jshear.errors import JShearError
from jshear.model.masks import mask_shapes
from jshear.prune.targets import TargetShape, kept_sizes, source_sizes, validate_target
from jshear.train.loop import PruneSpec, train_stage
from jshear.train.stages import masks_io

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Chooser:
  choose: Callable
  trains: Callable = lambda cfg: False
  validate: Callable = lambda cfg, src, target: None


# ---- learned masks (the Sheared-LLaMA method) ------------------------------------------

def _learned(ctx, model, stage):
  import jax
  state, _ = train_stage(ctx, stage, model.cfg, model.params, ctx.spec,
                         init_log_alpha=lambda: _initial_log_alpha(ctx, model))
  prune_state = jax.tree.map(shd.to_host, state["prune"])
  return masks_io.save(ctx.workdir, ctx.spec, masks_io.learned_masks(prune_state),
                       log_alpha=prune_state.log_alpha)


def _initial_log_alpha(ctx, model):
  """log_alpha to start from, or None for the reference's uniform start
  (prune.learned.mask_init)."""
  from jshear.prune import mask_init
  p = ctx.cfg.prune
  lc = p.learned
  if lc.mask_init == "uniform":
    return None
  scores = _scores(ctx, model, "importance", ctx.spec.groups)
  return mask_init.from_scores(model.cfg, ctx.spec.target, scores, lc.mask_init_spread,
                               tuple(float(b) for b in lc.log_alpha_bounds),
                               lc.mask_init_band, lc.mask_init_band_width,
                               mask_init.band_groups(p))


# ---- one-shot and iterative choosers ----------------------------------------------------

def _scores(ctx, model, method, groups) -> dict:
  from jshear.prune import baselines
  cfg, mcfg, params = ctx.cfg, model.cfg, model.params
  if not groups:
    return {}
  if method == "magnitude":
    return baselines.magnitude_scores(mcfg, params, groups)
  if method == "random":
    return baselines.random_scores(mcfg, groups, cfg.seed)
  if method == "importance":
    from jshear.prune import importance
    if not ctx.data_dir:
      raise JShearError("importance scores need calibration data (config.data)")
    path = os.path.join(ctx.workdir, "scores.npz") if ctx.workdir else None
    if path:
      s = importance.cached_scores(path, mcfg, params, ctx.data_dir, cfg.prune.calib.rows,
                                   cfg.prune.calib.batch, ctx.mesh)
    else:
      s = importance.compute_scores(mcfg, params, importance.calibration_rows(
          ctx.data_dir, cfg.prune.calib.rows), cfg.prune.calib.batch, ctx.mesh)
    return {g: s[g] for g in groups}
  raise AssertionError(method)


def one_shot_masks(ctx, model) -> dict:
  """0/1 masks of a one-shot method (importance scores are cached in WORKDIR/scores.npz)."""
  from jshear.prune import baselines, layerchop
  cfg, spec, mcfg = ctx.cfg, ctx.spec, model.cfg
  if cfg.prune.method == "layerchop":
    width = tuple(g for g in spec.groups if g != "layer")
    wmethod = cfg.prune.layerchop.width
    if wmethod == "none":  # nothing narrower (checked in validate): keep every unit
      scores = {g: np.ones(mask_shapes(mcfg)[g], np.float32) for g in width}
    else:
      scores = _scores(ctx, model, wmethod, width)
    if "layer" in spec.groups:
      scores["layer"] = layerchop.layer_scores(mcfg.num_layers, spec.target.num_layers,
                                               cfg.prune.layerchop.layout)
  else:
    scores = _scores(ctx, model, cfg.prune.method, spec.groups)
  return baselines.masks_from_scores(mcfg, scores, spec.target)


def _one_shot(ctx, model, stage=None):
  return masks_io.save(ctx.workdir, ctx.spec, one_shot_masks(ctx, model))


def mask_schedule(ctx, model):
  """The iterative methods' `MaskSchedule` (dimchop, gradual layerchop)."""
  from jshear.prune import importance, iterative, layerchop
  cfg, spec, mcfg = ctx.cfg, ctx.spec, model.cfg
  if cfg.prune.method == "dimchop":
    if not ctx.data_dir:
      raise JShearError("prune.method dimchop needs calibration data (config.data)")
    rows = importance.calibration_rows(ctx.data_dir, cfg.prune.calib.rows)
    score = importance.make_scorer(mcfg, ctx.mesh)
    return iterative.dimchop_schedule(cfg, mcfg, spec.target, spec.groups,
                                      lambda p: score(p, rows, cfg.prune.calib.batch))
  final = one_shot_masks(ctx, model)
  dropped = layerchop.dropped_layers(mcfg.num_layers, spec.target.num_layers,
                                     cfg.prune.layerchop.layout)
  return iterative.layerchop_schedule(mcfg, spec.target, spec.groups,
                                      int(cfg.prune.layerchop.every), int(cfg.prune.steps),
                                      dropped, final)


def _iterative(ctx, model, stage):
  state, _ = train_stage(ctx, stage, model.cfg, model.params,
                         schedule=mask_schedule(ctx, model))
  final = {g: shd.to_host(m) for g, m in state["masks"].items()}
  return masks_io.save(ctx.workdir, ctx.spec, final)


def _layerchop(ctx, model, stage):
  return (_iterative if ctx.cfg.prune.layerchop.every else _one_shot)(ctx, model, stage)


# ---- validation -----------------------------------------------------------------------

def _check_dimchop(cfg, src, target):
  from jshear.prune import iterative
  iterative.check_dimchop(cfg.prune)


def _check_layerchop(cfg, src, target):
  from jshear.prune import iterative, layerchop
  lc = cfg.prune.layerchop
  dropped = layerchop.dropped_layers(src.num_layers, target.num_layers, lc.layout)
  width = lc.width
  if width not in _WIDTH_METHODS:
    raise JShearError(f"config.prune.layerchop.width={width!r} (known: {list(_WIDTH_METHODS)})")
  narrower = [f for f in ("num_heads", "num_kv_heads", "hidden_size", "intermediate_size")
              if getattr(target, f) < getattr(src, f)]
  if width == "none" and narrower:
    raise JShearError(f"config.prune.layerchop.width='none' prunes depth only, but the target "
                      f"is narrower than the source in {narrower}; set layerchop.width to "
                      f"importance, magnitude or random, or keep those target fields at the "
                      f"source's values")
  if lc.every:
    iterative.check_layerchop(int(lc.every), int(cfg.prune.steps), len(dropped))


def _check_learned(cfg, src, target):
  from jshear.prune import mask_init
  mask_init.check_config(cfg.prune)
  groups = [g.strip() for g in cfg.prune.groups.split(",") if g.strip()]
  mask_init.check_reachable(cfg.prune, src, target, removable_groups(src, target, groups))


CHOOSERS = {
    "learned": Chooser(_learned, trains=lambda cfg: True, validate=_check_learned),
    "dimchop": Chooser(_iterative, trains=lambda cfg: True, validate=_check_dimchop),
    "layerchop": Chooser(_layerchop, trains=lambda cfg: bool(cfg.prune.layerchop.every),
                         validate=_check_layerchop),
    "importance": Chooser(_one_shot),
    "magnitude": Chooser(_one_shot),
    "random": Chooser(_one_shot),
}
PRUNE_METHODS = tuple(CHOOSERS)


def chooser(cfg) -> Chooser:
  if cfg.prune.method not in CHOOSERS:
    raise JShearError(f"config.prune.method={cfg.prune.method!r} (known: {list(PRUNE_METHODS)})")
  return CHOOSERS[cfg.prune.method]


# ---- which method reads which knob (the table: jshear.config_base.KNOB_BLOCKS) ----------

def check_knobs(cfg) -> None:
  """Refuses a run that sets a knob its prune.method does not read (one line, `; `-joined)."""
  from jshear.config_base import unread_knobs
  bad = unread_knobs(cfg)
  if bad:
    raise JShearError("; ".join(bad))


def prune_spec(cfg, src) -> PruneSpec:
  """The validated pruning target of `cfg` for source config `src`."""
  t = cfg.prune.target
  target = TargetShape(t.num_layers, t.num_heads, t.num_kv_heads or src.num_kv_heads,
                       t.hidden_size, t.intermediate_size)
  groups = tuple(g.strip() for g in cfg.prune.groups.split(",") if g.strip())
  method = chooser(cfg)
  check_knobs(cfg)
  validate_target(src, target, groups)
  method.validate(cfg, src, target)
  lc = cfg.prune.learned
  return PruneSpec(target, removable_groups(src, target, groups), lc.constraint,
                   lc.target_warmup_steps)


def removable_groups(src, target, groups) -> tuple:
  """`groups` less those whose target keeps every unit of the source: they get no gates,
  no multipliers and no sampling noise (a gate that can only stay would cost a
  multiplier that climbs for the whole run and a dimmed sample now and then)."""
  kept, full = kept_sizes(src, target, groups), source_sizes(src, groups)
  idle = [g for g in groups if kept[g] == full[g]]
  for g in idle:
    _log.info("prune: group %s keeps all %d of %d units: no gates", g, kept[g], full[g])
  return tuple(g for g in groups if g not in idle)


def trains_in_prune(cfg) -> bool:
  """Whether the prune stage trains the weights (learned masks, iterative pruning)."""
  return chooser(cfg).trains(cfg)
