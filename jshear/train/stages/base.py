"""What a stage declares about itself, once, in its own module (`STAGE = Stage(...)`).

The pipeline, the planner, compare, cleanup and the DONE-marker hashing read these
declarations instead of keeping their own lists, so a new stage is one new module plus one
row in the table (`jshear/train/stages/__init__.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional


def _same_shape(cfg, model_cfg, spec):
  return model_cfg


def _no_checks(cfg, model_cfg, spec):
  return None


@dataclasses.dataclass(frozen=True)
class Stage:
  """name: as listed in config.stages.
  run(ctx, model) -> model: the stage's work (ctx: a RunContext).
  block: the config block the stage trains with or reads ("" for none); `defaults()` gives
    that block when a config lacks it (a stage added after base_config was written).
  depends_on: further config blocks its result depends on (DONE-marker key), besides block.
  trains(cfg): whether it runs training steps (the planner plans those; None: never).
  seed_offset: its seed is cfg.seed * 1000 + seed_offset (state rng and data stream), so
    no two stages replay each other's rows; unique across the table.
  stream_from: a stage whose data stream this one continues under data.stream=shared.
  output: the model dir it leaves (loaded instead of re-running it once done; None: none).
  also_writes: other workdir dirs it owns (cleared when its config changed).
  reads_checkpoints: stages whose checkpoints this one restores (cleanup keeps them until
    this stage is done).
  shape(cfg, model_cfg, spec) -> the model config after the stage.
  validate(cfg, model_cfg, spec): config checks that fail before anything is written, with
    the model config the stage will start from."""
  name: str
  run: Callable
  block: str = ""
  defaults: Optional[Callable] = None
  depends_on: tuple = ()
  trains: Optional[Callable] = None
  seed_offset: int = 0
  stream_from: Optional["Stage"] = None
  output: Optional[str] = None
  also_writes: tuple = ()
  reads_checkpoints: tuple = ()
  shape: Callable = _same_shape
  validate: Callable = _no_checks

  @property
  def blocks(self) -> tuple:
    return ((self.block,) if self.block else ()) + tuple(self.depends_on)

  def seed(self, cfg) -> int:
    return int(cfg.seed) * 1000 + self.seed_offset
