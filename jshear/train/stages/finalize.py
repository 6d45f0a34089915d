"""finalize: the chosen masks folded into the weights and sliced -> WORKDIR/pruned/, a
dense model of the target shape that records the source it came from."""

from __future__ import annotations

import os

import jax

from jshear.errors import JShearError
from jshear.prune.finalize import finalize
from jshear.train.loop import restore_final_state
from jshear.prune.targets import target_config
from jshear.train.stages import choosers, masks_io
from jshear.train.stages import prune as prune_stage
from jshear.train.stages.base import Stage
from jshear.train.stages.common import Model, gather_params, save_dir


def run(ctx, model: Model) -> Model:
  cfg, spec = ctx.cfg, ctx.spec
  masks = masks_io.load(ctx.workdir)
  if masks is None:
    raise JShearError(f"stage finalize needs {os.path.join(ctx.workdir, 'masks', 'masks.npz')} "
                      "from a finished prune stage")
  params = model.params
  if choosers.trains_in_prune(cfg):  # the weights were trained along with the masks
    learned = cfg.prune.method == "learned"
    params = gather_params(restore_final_state(
        ctx, prune_stage.STAGE, model.cfg, spec if learned else None,
        None if learned else spec.groups)["params"])
  mcfg, params = finalize(model.cfg, params, masks)
  params = jax.device_get(params)
  out = Model(mcfg, params, model.tokenizer, ctx.source.origin if ctx.source else None)
  save_dir(os.path.join(ctx.workdir, STAGE.output), out, params, out.origin)
  ctx.out["pruned_params"] = _count(params)
  return out


def _count(params):
  from jshear.model.params import count_params
  return count_params(params)


def _shape(cfg, model_cfg, spec):
  return target_config(model_cfg, spec.target) if spec is not None else model_cfg


STAGE = Stage("finalize", run, output="pruned", reads_checkpoints=("prune",), shape=_shape)
