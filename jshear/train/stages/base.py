"""What a stage declares about itself, once, in its own module (`STAGE = Stage(...)`).

The pipeline, the planner, compare, cleanup and the DONE-marker hashing read these
declarations instead of keeping their own lists, so a new stage is one new module plus one
row in the table (`jshear/train/stages/__init__.py`).
"""

from __future__ import annotations

import copy
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
    the model config the stage will start from.
  repeats: whether config.stages may list it more than once (`occurrence`).
  previous: on a later occurrence, the one before it (None on the first)."""
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
  repeats: bool = False
  previous: Optional["Stage"] = None

  @property
  def first(self) -> "Stage":
    """The stage's first occurrence (its row in the stage table)."""
    return self if self.previous is None else self.previous.first

  def occurrence(self, k: int, cfg) -> "Stage":
    """The k-th listing (k >= 2) of this table row in config.stages: named `NAME_k` for its
    workdir dir, checkpoints, DONE key and metrics; seed offset + 100 (k - 1); output dir
    `OUTPUT_k`. Its config block is `BLOCK_k` when the config has one (keys it lacks come
    from BLOCK, pipeline.with_stage_blocks), else BLOCK. `self`: occurrence k - 1."""
    first = self.first
    block = first.block
    if block and f"{block}_{k}" in cfg:
      block = f"{block}_{k}"
    suffix = lambda d: f"{d}_{k}"
    return dataclasses.replace(
        first, name=suffix(first.name), block=block, previous=self,
        seed_offset=first.seed_offset + 100 * (k - 1) if first.seed_offset else 0,
        output=suffix(first.output) if first.output else None,
        also_writes=tuple(map(suffix, first.also_writes)),
        shape=_seeing(first.shape, first.block, block),
        validate=_seeing(first.validate, first.block, block))

  @property
  def blocks(self) -> tuple:
    return ((self.block,) if self.block else ()) + tuple(self.depends_on)

  def seed(self, cfg) -> int:
    return int(cfg.seed) * 1000 + self.seed_offset


def _seeing(fn, base_block: str, block: str):
  """fn(cfg, ...) called on a copy of cfg whose `base_block` is `block`: a later occurrence's
  shape and checks read its own block under the name its module reads."""
  if block == base_block:
    return fn

  def call(cfg, *args):
    view = copy.deepcopy(cfg)
    with view.unlocked():
      view[base_block] = copy.deepcopy(cfg[block])
    return fn(view, *args)
  return call
