"""pretrain: random init (the config's model shape) -> WORKDIR/pretrained/; listed again
after another stage (pretrain,grow,pretrain) it trains the model handed to it ->
WORKDIR/pretrained_2/."""

from __future__ import annotations

import os

import jax

from jshear.model.params import init_params
from jshear.train.loop import train_stage
from jshear.train.stages.base import Stage
from jshear.train.stages.common import Model, gather_params, save_dir


def run(ctx, model: Model) -> Model:
  stage = ctx.stage or STAGE
  params = model.params
  if params is None:  # the run's first stage: from scratch
    params = jax.device_get(init_params(model.cfg, jax.random.key(ctx.cfg.seed)))
  state, _ = train_stage(ctx, stage, model.cfg, params)
  save_dir(os.path.join(ctx.workdir, stage.output), model, state["params"])
  return Model(model.cfg, gather_params(state["params"]), model.tokenizer)


STAGE = Stage("pretrain", run, block="pretrain", trains=lambda cfg: True, seed_offset=1,
              output="pretrained", repeats=True)
