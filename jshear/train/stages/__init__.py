"""The stage table: name -> module with `run(ctx, model) -> model` and `OUTPUT` (the model
dir the stage leaves, loaded instead of re-running it once it is done; None if it leaves no
model). To add a stage: write a module with those two names, add it here and to
`jshear.config_base.STAGES` (the order stages run in)."""

from jshear.train.stages import continued, export, finalize, pretrain, prune

STAGE_TABLE = {"pretrain": pretrain, "prune": prune, "finalize": finalize,
               "continue": continued, "export": export}
