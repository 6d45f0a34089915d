"""grow: Gstack depth growth (jshear/model/grow.py) -> WORKDIR/grown/.

The model handed in (or `grow.source`, a trained jshear or HF model dir) gets its whole
layer list stacked `g` times (`grow.factor`, or `grow.target_layers` / its depth);
embeddings, final norm and head are copied. A stage after it starts from the grown model
with a fresh optimizer and schedule; a later listing of a training stage continues the data
stream of its earlier listing (docs/growth.md).
"""

from __future__ import annotations

import os

import jax

from jshear import model_io
from jshear.config_base import grow_block
from jshear.errors import JShearError
from jshear.model import grow as grow_mod
from jshear.model.params import count_params
from jshear.train.stages.base import Stage
from jshear.train.stages.common import Model, load_any, save_dir


def _source_config(cfg, model_cfg):
  """The config of the model this stage grows (grow.source's, read without weights)."""
  path = cfg.grow.source
  if not path:
    return model_cfg
  if not os.path.isdir(path):
    raise JShearError(f"config.grow.source={path!r} is not a directory")
  return model_io.read_model_config(path).replace(
      attention_impl=cfg.model.attention_impl, remat=cfg.model.remat,
      scan_layers=cfg.model.scan_layers)


def _factor(cfg, source_cfg) -> int:
  return grow_mod.growth_factor(source_cfg.num_layers, cfg.grow.factor, cfg.grow.target_layers)


def _validate(cfg, model_cfg, spec):
  _factor(cfg, _source_config(cfg, model_cfg))


def _shape(cfg, model_cfg, spec):
  src = _source_config(cfg, model_cfg)
  return src.replace(num_layers=src.num_layers * _factor(cfg, src))


def run(ctx, model: Model) -> Model:
  stage = ctx.stage or STAGE
  cfg, block = ctx.cfg, ctx.cfg[stage.block]
  src = load_any(block.source, cfg) if block.source else model
  if src.params is None:
    raise JShearError(f"stage {stage.name} needs a trained model: list a training stage "
                      f"before it or set config.{stage.block}.source")
  g = grow_mod.growth_factor(src.cfg.num_layers, block.factor, block.target_layers)
  # zero / random draw their new layers from the stage's own seed
  mcfg, params = grow_mod.grow(src.cfg, src.params, g, block.operator,
                               rng=jax.random.key(stage.seed(cfg)))
  params = jax.device_get(params)
  # A new model: no origin, so nothing later mistakes it for a pruned copy of a source.
  out = Model(mcfg, params, src.tokenizer)
  save_dir(os.path.join(ctx.workdir, stage.output), out, params)
  ctx.out[f"{stage.name}_params"] = count_params(params)
  return out


STAGE = Stage("grow", run, block="grow", defaults=grow_block, seed_offset=4, output="grown", shape=_shape,
              validate=_validate, repeats=True)
