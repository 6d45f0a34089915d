"""Held-out loss with a standard error: the figure method comparisons are judged by.

Each domain's loss is the mean over its held-out rows (token-weighted within a row); the
overall figure is the mean over domains, and its standard error combines the domains' row
standard errors: se = sqrt(sum_d se_d^2) / K.

Two models scored on the same rows are compared by their paired difference: the row-to-row
spread (a domain's hard rows are hard for every model) cancels, so its standard error is
far below either model's own (`paired_difference`).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from jshear import sharding as shd
from jshear.data.mixture import domain_sources
from jshear.data.shards import positions_from_segments
from jshear.model.loss import row_nll


def heldout_losses(data_dir: str, mesh, model_cfg, params, masks=None, rows: int = 64,
                   batch_size: int = 8, split: str = "test") -> dict:
  """{"mean", "se", "split", "domains": {d: {"loss", "se", "rows"}}} over the first `rows`
  rows a domain of the prepared data's `split` (reported figures: the test part, never the
  validation rows that steered training), batches laid out on `mesh` (each process passes
  its slice of every batch)."""
  sources = domain_sources(data_dir, split)
  P, p_i = jax.process_count(), jax.process_index()
  if batch_size % P:
    batch_size = P * max(1, batch_size // P)
  fn = jax.jit(lambda p, m, b: row_nll(p, b, cfg=model_cfg, masks=m),
               out_shardings=shd.replicated(mesh))
  domains = {}
  for d in sorted(sources):
    src = sources[d]
    n = min(len(src), rows)
    if n == 0:
      continue
    data = np.stack([np.asarray(src[i]) for i in range(n)])
    pad = (-n) % batch_size
    tok = np.concatenate([data[:, 0], np.zeros((pad, data.shape[-1]), data.dtype)])
    seg = np.concatenate([data[:, 1], np.zeros((pad, data.shape[-1]), data.dtype)])
    losses = []
    per_host = batch_size // P
    for s in range(0, len(tok), batch_size):
      mine = slice(s + p_i * per_host, s + (p_i + 1) * per_host)
      b = {"tokens": tok[mine], "segment_ids": seg[mine],
           "positions": positions_from_segments(seg[mine])}
      nll, cnt = fn(params, masks, shd.host_local_batch_to_global(b, mesh))
      nll, cnt = shd.to_host(nll), shd.to_host(cnt)
      losses += [float(a / c) for a, c in zip(nll, cnt) if c > 0]
    losses = np.asarray(losses[:n])
    se = _se(losses) if n > 1 else float("nan")
    domains[d] = {"loss": float(losses.mean()), "se": se, "rows": int(n),
                  "row_losses": [float(x) for x in losses]}
  k = len(domains)
  mean = float(np.mean([v["loss"] for v in domains.values()]))
  se = _combined([v["se"] for v in domains.values() if v["se"] == v["se"]], k)
  return {"mean": mean, "se": se, "split": split, "domains": domains}


def _se(x: np.ndarray) -> float:
  """Standard error of the mean of rows `x`."""
  return float(np.std(x, ddof=1) / math.sqrt(len(x)))


def _combined(ses, k: int) -> float:
  """Standard error of a mean over k domains with standard errors `ses`."""
  return float(math.sqrt(sum(x * x for x in ses)) / k)


def paired_difference(a: dict, b: dict) -> dict:
  """{"mean", "se"} of a - b (two `heldout_losses` results on the same rows): the mean over
  domains of the mean row-wise difference, se = sqrt(sum_d se_d^2) / K."""
  da, db = a["domains"], b["domains"]
  if sorted(da) != sorted(db):
    raise ValueError(f"paired_difference: different domains {sorted(da)} vs {sorted(db)}")
  means, ses = [], []
  for d in sorted(da):
    ra, rb = (np.asarray(x["domains"][d].get("row_losses", ()), np.float64) for x in (a, b))
    if len(ra) == 0 or len(ra) != len(rb):
      raise ValueError(f"paired_difference: domain {d!r} has {len(ra)} vs {len(rb)} row "
                       "losses; both must be scored on the same rows")
    diff = ra - rb
    means.append(float(diff.mean()))
    ses.append(_se(diff) if len(diff) > 1 else 0.0)
  return {"mean": float(np.mean(means)), "se": _combined(ses, len(means))}
