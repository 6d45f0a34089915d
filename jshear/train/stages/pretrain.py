"""pretrain: random init (the config's model shape) -> WORKDIR/pretrained/."""

from __future__ import annotations

import os

import jax

from jshear.model.params import init_params
from jshear.train.loop import train_stage
from jshear.train.stages.base import Stage
from jshear.train.stages.common import Model, gather_params, save_dir


def run(ctx, model: Model) -> Model:
  params = jax.device_get(init_params(model.cfg, jax.random.key(ctx.cfg.seed)))
  state, _ = train_stage(ctx, STAGE, model.cfg, params)
  save_dir(os.path.join(ctx.workdir, STAGE.output), model, state["params"])
  return Model(model.cfg, gather_params(state["params"]), model.tokenizer)


STAGE = Stage("pretrain", run, block="pretrain", trains=lambda cfg: True, seed_offset=1,
              output="pretrained")
