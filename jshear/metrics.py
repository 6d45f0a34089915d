"""Run observability: metrics.jsonl (always), TensorBoard events, and a progress line.

`read_metrics` is the one reader of metrics.jsonl (the pipeline, jshear.eval.report, tests);
jax is imported only by the writer, so reading stays light."""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np


def _scalar(v):
  import jax
  v = np.asarray(jax.device_get(v))
  return float(v) if v.size == 1 else v.tolist()


class MetricsWriter:
  """Only process 0 writes; every record carries stage and step."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    import jax
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      self._f = open(self.path, "a")
      if tensorboard:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, stage: str, step: int, metrics: dict) -> dict:
    rec = {"stage": stage, "step": int(step), "time": time.time()}
    rec.update({k: _scalar(v) for k, v in metrics.items()})
    if self.active:
      self._f.write(json.dumps(rec) + "\n")
      self._f.flush()
      if self._tb is not None:
        for k, v in rec.items():
          if isinstance(v, float) and math.isfinite(v) and k not in ("step", "time"):
            self._tb.add_scalar(f"{stage}/{k}", v, int(step))
    return rec

  def close(self):
    if self.active:
      self._f.close()
      if self._tb is not None:
        self._tb.close()


def read_metrics(workdir: str, warnings: list[str] | None = None) -> list[dict]:
  """WORKDIR/metrics.jsonl's records with a numeric step, in file order ([] without the
  file); a record without a stage gets "train". A line that is not such a record (the torn
  last line of a killed run, a hand edit) is skipped and, given `warnings`, said there."""
  path = os.path.join(workdir, "metrics.jsonl")
  recs = []
  if not os.path.exists(path):
    return recs
  with open(path) as f:
    for n, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      try:
        r = json.loads(line)
      except json.JSONDecodeError:
        warn = f"metrics.jsonl line {n}: not JSON, skipped"
      else:
        if isinstance(r, dict) and isinstance(r.get("step"), (int, float)):
          r.setdefault("stage", "train")
          recs.append(r)
          continue
        warn = f"metrics.jsonl line {n}: no numeric 'step', skipped"
      if warnings is not None:
        warnings.append(warn)
  return recs


def model_flops_per_token(cfg) -> float:
  """6 x params for matmuls (fwd + bwd) plus attention's 12 x L x D_attn x T / 2 (causal)
  is added by the caller via `attention_flops_per_token`."""
  return 6.0 * (cfg.num_layers * cfg.layer_params() + cfg.vocab_size * cfg.hidden_size)


def attention_flops_per_token(cfg, seq_len: int) -> float:
  return 6.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
