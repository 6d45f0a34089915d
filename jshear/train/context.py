"""What every stage of one run shares, and the pruning target the prune stage works to."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Context:
  """What every stage of one run shares."""
  cfg: object                    # the run's ConfigDict
  workdir: str
  mesh: object
  writer: object                 # a jshear.metrics.MetricsWriter (None: nothing is logged)
  data_dir: str
  prune_trains: bool = False     # the prune method trains the weights (learned, iterative)


@dataclasses.dataclass
class PruneSpec:
  target: object                 # TargetShape
  groups: tuple
  constraint: str
  warmup_steps: int
