"""`drop_checkpoints=True`: a finished run deletes its training checkpoints.

A stage's checkpoints are the train state (weights plus optimizer moments, ~3x the model)
and the data loader's position. Once the run is done they are needed only to resume it, so
they can go, except for two readers that outlive their stage:
  - finalize restores the pruning stage's trained weights, so the pruning checkpoints go
    only when finalize is done too;
  - with data.stream=shared the continue stage starts where the pruning stage's stream
    stopped, and a later listing of a stage (pretrain after grow) where its earlier one's
    stopped, so every dropped stage keeps that position in WORKDIR/<stage>/stream_end.json.
"""

from __future__ import annotations

import logging
import os
import shutil

import jax

from jshear import distributed
from jshear.checkpoint import Checkpointer
from jshear.train.loop import stream_end_path
from jshear.train import stages as stage_table
from jshear.train.stages.common import write_json_atomic

_log = logging.getLogger(__name__)


def drop(workdir: str, stages, is_done) -> list[str]:
  """Deletes the checkpoints of every done stage whose readers (stages that declare
  `reads_checkpoints` of it) are done too; returns the checkpoint dirs deleted.
  `is_done(stage)` says whether a stage is finished."""
  dropped = []
  for stage in stages:
    ck = os.path.join(workdir, stage, "checkpoints")
    readers = [s.name for s in stage_table.STAGES if stage in s.reads_checkpoints]
    if not os.path.isdir(ck) or not is_done(stage) or not all(is_done(r) for r in readers):
      continue
    # Where its stream stopped, for a stage that continues it later (a re-run continue
    # with data.stream=shared; a later listing of this stage).
    c = Checkpointer(ck)
    try:
      extra = c.read_extra() if c.latest_step() is not None else {}
      if "loader" in extra:   # stages that read no stream (blockwise) keep no position
        write_json_atomic(stream_end_path(workdir, stage), extra["loader"])
    finally:
      c.close()
    distributed.barrier(f"drop-{stage}")  # every process has read before process 0 deletes
    if jax.process_index() == 0:
      shutil.rmtree(ck)
    dropped.append(ck)
  if dropped:
    _log.info("drop_checkpoints: deleted %s", dropped)
  return dropped
