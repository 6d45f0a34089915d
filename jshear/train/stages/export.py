"""export: the latest model -> WORKDIR/hf/ (a plain Hugging Face directory)."""

from __future__ import annotations

import os

import jax

from jshear import distributed
from jshear.train.stages.base import Stage
from jshear.train.stages.common import Model


def run(ctx, model: Model) -> Model:
  if jax.process_index() == 0:
    from jshear.convert.hf_export import export_hf
    ctx.out["hf_dir"] = export_hf(model.cfg.replace(attention_impl="xla", remat="none"),
                                  model.params, os.path.join(ctx.workdir, "hf"),
                                  tokenizer_dir=model.tokenizer,
                                  dtype=ctx.cfg.export.dtype or None, overwrite=True)
  distributed.barrier("export")
  return model


STAGE = Stage("export", run, block="export")
