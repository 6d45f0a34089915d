"""continue: continued pretraining with dynamic batch loading -> WORKDIR/continued/.

Distillation's default teacher and dynamic batch loading's reference losses come from the
unpruned source: the model this run pruned, or the source a pruned model dir records
(origin.json), never the pruned start itself."""

from __future__ import annotations

import os

from jshear.errors import JShearError
from jshear.train.loop import DomainEval, train_stage
from jshear.train.stages import prune as prune_stage
from jshear.train.stages import source as source_mod
from jshear.train.stages.base import Stage
from jshear.train.stages.common import (Model, compute_dtype, eval_domains, gather_params,
                                        save_dir)


def needs_source(cfg, block=None) -> list[str]:
  """What the continue stage needs the unpruned source for (empty: nothing). `block`: the
  stage's config block (default `continued`; a later listing may have its own)."""
  from jshear import distill
  block = cfg.continued if block is None else block
  why = []
  if cfg.distill.enable and "source" in distill.teacher_paths(cfg.distill.teachers):
    why.append("distillation's default teacher (distill.teachers)")
  if block.reweight_rule != "constant" and not dict(block.ref_losses):
    why.append("dynamic batch loading's reference losses (continued.ref_losses)")
  return why


def teacher_items(cfg, has_source: bool) -> list[str]:
  """distill.teachers as a list ("source" = the unpruned source), refusing "source" when
  the run has none."""
  from jshear import distill
  items = distill.teacher_paths(cfg.distill.teachers)
  if "source" in items and not has_source:
    raise JShearError("distill.teachers: the source teacher needs a source model "
                      "(this run pretrains from scratch); name teacher dirs instead")
  return items


def run(ctx, model: Model) -> Model:
  cfg, stage = ctx.cfg, ctx.stage or STAGE
  block = cfg[stage.block]
  why = needs_source(cfg, block)
  src = source_mod.unpruned_source(ctx, model, why) if why else None
  setup = _distill_setup(ctx, model, src, block.steps) if cfg.distill.enable else None
  reference = None
  if src is not None and block.reweight_rule != "constant":
    reference = lambda: DomainEval(ctx, src.cfg, eval_domains(ctx.data_dir),
                                   block.batch_size, block.eval_batches)(src.params)
  state, _ = train_stage(ctx, stage, model.cfg, model.params, distill=setup,
                         reference=reference)
  setup = None
  save_dir(os.path.join(ctx.workdir, stage.output), model, state["params"], model.origin)
  return Model(model.cfg, gather_params(state["params"]), model.tokenizer, model.origin)


def _distill_setup(ctx, student: Model, src: Model | None, steps: int):
  """Teachers: distill.teachers, "" or "source" = the unpruned source. The pruning's 0/1
  masks, when this run pruned, relate the student's layers and hidden channels to the
  source's (for hidden-state matching)."""
  import numpy as np

  from jshear import distill
  from jshear.train.stages.common import load_any, resolve_source
  cfg = ctx.cfg
  teachers = []
  for item in teacher_items(cfg, src is not None):
    if item == "source":
      teachers.append(("source", src.cfg, src.params, True))
    else:
      t = load_any(resolve_source(item), cfg)
      teachers.append((item, t.cfg, t.params, False))
  kept_layers = kept_hidden = None
  path = os.path.join(ctx.workdir, "masks", "binary_masks.npz")
  if os.path.exists(path):
    with np.load(path) as f:
      if "layer" in f.files:
        kept_layers = np.nonzero(f["layer"])[0]
      if "hidden" in f.files:
        kept_hidden = np.nonzero(f["hidden"])[0]
  return distill.build_setup(cfg.distill, student.cfg, teachers, steps=steps,
                             seed=cfg.seed * 1000 + DISTILL_SEED_OFFSET, compute_dtype=compute_dtype(cfg),
                             kept_layers=kept_layers, kept_hidden=kept_hidden)


DISTILL_SEED_OFFSET = 5  # the teacher draw (several teachers); no stage uses it
STAGE = Stage("continue", run, block="continued", depends_on=("distill",),
              trains=lambda cfg: True, seed_offset=3, stream_from=prune_stage.STAGE,
              output="continued", repeats=True)
