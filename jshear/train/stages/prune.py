"""prune: choose masks on the source with `prune.method` (a table in choosers.py) ->
WORKDIR/masks/ (and WORKDIR/prune/checkpoints when the method trains the weights)."""

from __future__ import annotations

from jshear.train.stages import choosers
from jshear.train.stages.common import Model

OUTPUT = None  # the model is unchanged until finalize


def run(ctx, model: Model) -> Model:
  choosers.chooser(ctx.cfg).choose(ctx, model)
  return model
