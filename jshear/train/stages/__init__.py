"""The stage table: every stage jshear runs, in the order they usually run (a run follows
config.stages; a stage's DONE key leaves out the blocks of rows after it that have not run
before it). Each row is the `STAGE` declaration of its own module
(`jshear.train.stages.base.Stage`: config block, whether it trains, seed offset, output dir,
shape change, checks, run). To add a stage: write a module with a `STAGE`, and add one row
here. A row that `repeats` may be listed again: `occurrences` names each later listing."""

from __future__ import annotations

from jshear.errors import JShearError
from jshear.train.stages import blockwise, continued, export, finalize, grow, pretrain, prune

# grow and blockwise are last so that adding them left the DONE keys of the older rows as
# they were (a run follows config.stages: blockwise runs between finalize and continue).
STAGES = (pretrain.STAGE, prune.STAGE, finalize.STAGE, continued.STAGE, export.STAGE,
          grow.STAGE, blockwise.STAGE)
MAX_OCCURRENCES = 9  # occurrence k's seed offset is + 100 (k - 1): below the next seed's


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


def occurrences(names, cfg) -> tuple:
  """The Stage of each entry of config.stages (`names`), in run order: a row's first
  listing is the row itself, its k-th is `Stage.occurrence(k)` (`pretrain_2`, ...)."""
  last, count, out = {}, {}, []
  for name in names:
    stage = get(name)
    k = count[name] = count.get(name, 0) + 1
    if k > 1 and not stage.repeats:
      can = [s.name for s in STAGES if s.repeats]
      raise JShearError(f"config.stages lists {name!r} more than once; only {can} may repeat")
    if k > MAX_OCCURRENCES:
      raise JShearError(f"config.stages lists {name!r} {k} times (at most {MAX_OCCURRENCES})")
    last[name] = stage if k == 1 else last[name].occurrence(k, cfg)
    out.append(last[name])
  return tuple(out)
