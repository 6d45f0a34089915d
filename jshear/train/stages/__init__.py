"""The stage table: every stage jshear runs, in the order they run. Each row is the `STAGE`
declaration of its own module (`jshear.train.stages.base.Stage`: config block, whether it
trains, seed offset, output dir, shape change, checks, run). To add a stage: write a module
with a `STAGE`, and add one row here."""

from __future__ import annotations

from jshear.errors import JShearError
from jshear.train.stages import continued, export, finalize, pretrain, prune

STAGES = (pretrain.STAGE, prune.STAGE, finalize.STAGE, continued.STAGE, export.STAGE)


def table() -> dict:
  """{name: Stage} in run order (reads STAGES at call time, so a test may extend it)."""
  names = [s.name for s in STAGES]
  offsets = [s.seed_offset for s in STAGES if s.seed_offset]
  if len(set(names)) != len(names) or len(set(offsets)) != len(offsets):
    raise AssertionError(f"stage table: names and seed offsets must be unique: {names}, "
                         f"{offsets}")
  return {s.name: s for s in STAGES}


def names() -> tuple:
  return tuple(s.name for s in STAGES)


def get(name: str):
  t = table()
  if name not in t:
    raise JShearError(f"unknown stage {name!r} (known: {list(t)})")
  return t[name]


def training_stages(cfg=None) -> tuple:
  """Stages that run training steps (for `cfg`: those whose trains(cfg) holds)."""
  return tuple(s for s in STAGES if s.trains is not None and (cfg is None or s.trains(cfg)))
