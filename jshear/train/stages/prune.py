"""prune: choose masks on the source with `prune.method` (a table in choosers.py) ->
WORKDIR/masks/ (and WORKDIR/prune/checkpoints when the method trains the weights)."""

from __future__ import annotations

from jshear.train.stages import choosers
from jshear.train.stages.base import Stage
from jshear.train.stages.common import Model


def run(ctx, model: Model) -> Model:
  choosers.chooser(ctx.cfg).choose(ctx, model, STAGE)
  return model


# The model is unchanged until finalize (output None); the masks go to WORKDIR/masks/.
STAGE = Stage("prune", run, block="prune", trains=choosers.trains_in_prune, seed_offset=2,
              also_writes=("masks",))
