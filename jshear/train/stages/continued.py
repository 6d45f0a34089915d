"""continue: continued pretraining with dynamic batch loading -> WORKDIR/continued/.

Distillation's default teacher and dynamic batch loading's reference losses come from the
unpruned source: the model this run pruned, or the source a pruned model dir records
(origin.json), never the pruned start itself.

With continued.lora.rank > 0 the stage trains LoRA adapters on the frozen weights; its
model dir (and so the export) holds the merged dense model, and continued.lora.save_adapters
also writes the unmerged adapters to WORKDIR/adapters/ (PEFT layout)."""

from __future__ import annotations

import os

import jax

from jshear.errors import JShearError
from jshear.train.adapters import LoraAddon
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
  params = state["params"]
  addon = LoraAddon.from_block(block)
  if addon is not None:
    if block.lora.save_adapters:
      _save_adapters(ctx, model, addon, state["lora"])
    # The dense model W + scale * A B, laid out like the weights it replaces.
    params = jax.jit(lambda st: addon.merged(model.cfg, st),
                     out_shardings=jax.tree.map(lambda x: x.sharding, params))(state)
  save_dir(os.path.join(ctx.workdir, stage.output), model, params, model.origin)
  return Model(model.cfg, gather_params(params), model.tokenizer, model.origin)


def _save_adapters(ctx, model: Model, addon, adapters) -> None:
  from jshear import distributed
  from jshear.convert.peft_export import export_adapters
  cfg = ctx.cfg
  host = gather_params(adapters)
  if "finalize" in ctx.stages:
    base = os.path.join(ctx.workdir, "pruned")
  else:
    base = cfg.init_from or cfg.model.source
  if jax.process_index() == 0:
    export_adapters(model.cfg, host, os.path.join(ctx.workdir, ADAPTERS_DIR), rank=addon.rank,
                    alpha=addon.alpha, dropout=addon.dropout, base=base)
  distributed.barrier("save-adapters")


def validate(cfg, model_cfg, spec) -> None:
  """LoRA's rank must stay below every adapted matrix's smaller dimension (of the shape
  this stage starts from)."""
  lc = cfg.continued.get("lora")
  if lc and int(lc.rank) > 0:
    from jshear.model import lora
    lora.validate(model_cfg, int(lc.rank), lora.parse_targets(lc.targets), "continued.lora")


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
ADAPTERS_DIR = "adapters"  # continued.lora.save_adapters: the unmerged LoRA adapters
STAGE = Stage("continue", run, block="continued", depends_on=("distill",),
              trains=lambda cfg: True, seed_offset=3, stream_from=prune_stage.STAGE,
              output="continued", also_writes=(ADAPTERS_DIR,), validate=validate,
              repeats=True)
