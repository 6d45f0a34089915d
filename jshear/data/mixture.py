"""Multi-domain batches with exact, seeded composition (for dynamic batch loading).

Each global batch of B rows holds, per domain i, about w_i * B rows: the target
w_i * B plus the residual carried from earlier batches is rounded by largest
remainder (ties to the lower domain index), and what rounding gave or took is
carried on. So while the weights hold, each domain's total stays within one row
of the sum of its targets (w_i * B exactly when that is an integer), and carry
survives weight changes (a domain set to weight 0 gets no rows and drops its
carry). grain's `IterDataset.mix` samples by weight instead, which makes
composition a matter of luck; grain is still used per domain:
`MapDataset.source(shards).shuffle(seed).repeat()` gives random access to an
endless stream that is reshuffled every epoch.

Every host computes the same global composition (cheap) and reads only its own
rows [p*B/P, (p+1)*B/P). The state is a small JSON dict (`get_state`).
"""

import logging
import math
import os
import zlib
from typing import Mapping, Sequence

import grain
import numpy as np

from jshear.data import shards, view
from jshear.data.prepare import load_manifest
from jshear.errors import JShearError

log = logging.getLogger(__name__)

STATE_VERSION = 1


# train; the held-out rows' validation part (what steers training: dynamic batch loading,
# in-loop evals, tuning) and test part (what is reported); eval = valid + test.
SPLITS = ("train", "valid", "test", "eval")


def domain_sources(prepared_dir: str, split: str = "train", tokenizer=None) -> dict[str, shards.ShardedSequences]:
  """Per-domain random-access sources of a prepared dataset (see prepare.py), or of a view
  of one (view.py: its kept train rows, its source's held-out rows)."""
  m = load_manifest(prepared_dir, tokenizer)
  if split not in SPLITS:
    raise JShearError(f"split: expected one of {SPLITS}, got '{split}'")
  if view.is_view(m):
    base = domain_sources(view.source_dir(prepared_dir, m), split)
    return view.train_sources(prepared_dir, m, base) if split == "train" else base
  return {name: shards.ShardedSequences([os.path.join(prepared_dir, s["file"]) for s in d[split]["shards"]])
          for name, d in m["domains"].items()}


def _domain_seed(seed: int, name: str) -> int:
  return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**32


def compose(weights: np.ndarray, residuals: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(rows per domain, new residuals): largest remainder over target + carry.

  Counts are never negative and a zero-weight domain gets no rows (its carry is
  dropped); the total is then fixed one row at a time, most under-served first.
  """
  active = weights > 0
  # Rounded so that e.g. 0.3 * 10 counts as exactly 3, not 2.9999999999999996.
  target = np.where(active, np.round(weights * batch_size + residuals, 9), 0.0)
  counts = np.where(active, np.maximum(np.floor(target), 0), 0).astype(np.int64)
  for _ in range(batch_size - int(counts.sum())):  # give to the most under-served
    counts[int(np.argmax(np.where(active, target - counts, -np.inf)))] += 1
  for _ in range(int(counts.sum()) - batch_size):  # take from the most over-served
    counts[int(np.argmin(np.where(counts > 0, target - counts, np.inf)))] -= 1
  return counts, np.where(active, np.round(target - counts, 9), 0.0)


class MixtureLoader:
  """Global batches of `batch_size` rows from weighted domains; this host's slice only.

  sources: name -> random-access source of int32 `[2, seq_len]` rows (tokens,
  segment ids), e.g. `domain_sources(dir)`. Batches are dicts of numpy arrays:
  tokens/segment_ids/positions `[B/P, T]` int32 and domain `[B/P]` int32 (index
  into `self.domains`).
  """

  def __init__(self, sources: Mapping[str, Sequence], weights, batch_size: int, seed: int = 0,
               process_index: int = 0, process_count: int = 1):
    if batch_size <= 0 or process_count <= 0 or batch_size % process_count:
      raise JShearError(f"batch_size: expected a positive multiple of process_count={process_count}, "
                        f"got {batch_size}")
    if not 0 <= process_index < process_count:
      raise JShearError(f"process_index: expected in [0, {process_count}), got {process_index}")
    if seed < 0:
      raise JShearError(f"seed: expected >= 0, got {seed}")
    if not sources:
      raise JShearError("sources: expected at least one domain, got none")
    self.domains = list(sources)
    self.batch_size, self.seed = batch_size, seed
    self.process_index, self.process_count = process_index, process_count
    self._sizes = [len(sources[d]) for d in self.domains]
    self._data = [grain.MapDataset.source(sources[d]).shuffle(seed=_domain_seed(seed, d)).repeat()
                  if n else None for d, n in zip(self.domains, self._sizes)]
    k = len(self.domains)
    self._consumed = [0] * k
    self._residuals = np.zeros(k)
    self._weights = np.zeros(k)
    self._history = []
    self.step = 0
    self.set_weights(weights)

  # -- weights -----------------------------------------------------------------

  @property
  def weights(self) -> dict[str, float]:
    return dict(zip(self.domains, self._weights.tolist()))

  def set_weights(self, weights) -> None:
    """Takes effect from the next batch. weights: {domain: w} or a sequence in domain order."""
    if isinstance(weights, Mapping):
      extra = sorted(set(weights) - set(self.domains))
      missing = sorted(set(self.domains) - set(weights))
      if extra or missing:
        raise JShearError(f"weights: expected keys {self.domains}, got unknown {extra} and missing {missing}")
      weights = [weights[d] for d in self.domains]
    w = np.asarray(weights, np.float64)
    if w.shape != (len(self.domains),):
      raise JShearError(f"weights: expected {len(self.domains)} values for {self.domains}, got shape {w.shape}")
    bad = [f"{d}={x}" for d, x in zip(self.domains, w.tolist()) if not math.isfinite(x) or x < 0]
    if bad:
      raise JShearError(f"weights: expected finite values >= 0, got {', '.join(bad)}")
    total = float(w.sum())
    if total <= 0:
      raise JShearError(f"weights: expected a positive sum, got {total}")
    if abs(total - 1.0) > 1e-6:
      log.warning("weights sum to %s, not 1: normalising", total)
    w = w / total
    empty = [d for d, x, n in zip(self.domains, w, self._sizes) if x > 0 and n == 0]
    if empty:
      raise JShearError(f"weights: domains {empty} have no sequences, expected weight 0")
    self._weights = w
    entry = [self.step, w.tolist()]
    if self._history and self._history[-1][0] == self.step:
      self._history[-1] = entry
    elif not self._history or self._history[-1][1] != entry[1]:
      self._history.append(entry)

  # -- batches -----------------------------------------------------------------

  def plan(self) -> tuple[np.ndarray, np.ndarray]:
    """(domain, index into that domain's stream) of every row of the next global batch."""
    return self._plan()[:2]

  def _plan(self):
    counts, residuals = compose(self._weights, self._residuals, self.batch_size)
    dom = np.repeat(np.arange(len(self.domains)), counts)
    idx = np.concatenate([self._consumed[i] + np.arange(c) for i, c in enumerate(counts)])
    perm = np.random.default_rng([self.seed, self.step]).permutation(self.batch_size)
    return dom[perm], idx[perm].astype(np.int64), counts, residuals

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return self.next_batch()

  def next_batch(self) -> dict[str, np.ndarray]:
    dom, idx, counts, self._residuals = self._plan()
    per_host = self.batch_size // self.process_count
    mine = slice(self.process_index * per_host, (self.process_index + 1) * per_host)
    rows = np.stack([self._data[d][int(i)] for d, i in zip(dom[mine], idx[mine])])
    for i, c in enumerate(counts):
      self._advance(i, int(c))
    self.step += 1
    segs = np.ascontiguousarray(rows[:, 1])
    return {"tokens": np.ascontiguousarray(rows[:, 0]), "segment_ids": segs,
            "positions": shards.positions_from_segments(segs), "domain": dom[mine].astype(np.int32)}

  def _advance(self, i: int, count: int) -> None:
    if not count:
      return
    n, before = self._sizes[i], self._consumed[i]
    self._consumed[i] += count
    for epoch in range(before // n + 1, self._consumed[i] // n + 1):
      log.warning("domain %s starts epoch %d (its %d sequences are reshuffled and reused)",
                  self.domains[i], epoch, n)

  # -- state -------------------------------------------------------------------

  def get_state(self) -> dict:
    """Everything needed to reproduce the next batch; plain JSON types only."""
    return {
        "version": STATE_VERSION, "step": self.step, "seed": self.seed, "batch_size": self.batch_size,
        "domains": list(self.domains), "weights": self._weights.tolist(),
        "residuals": self._residuals.tolist(),
        "epochs": [c // n if n else 0 for c, n in zip(self._consumed, self._sizes)],
        "positions": [c % n if n else 0 for c, n in zip(self._consumed, self._sizes)],
        "sizes": list(self._sizes), "weight_history": [list(h) for h in self._history],
    }

  def _check_state(self, state: Mapping, what: str, keys) -> None:
    for key in keys:
      want = {"version": STATE_VERSION, "domains": self.domains, "seed": self.seed,
              "batch_size": self.batch_size, "sizes": self._sizes}[key]
      if state.get(key) != want:
        raise JShearError(f"{what}: expected {key}={want}, got {state.get(key)}")

  def _consumed_from(self, state: Mapping) -> list[int]:
    return [int(e) * n + int(p) for e, p, n in zip(state["epochs"], state["positions"], self._sizes)]

  def set_state(self, state: Mapping) -> None:
    self._check_state(state, "loader state", ("version", "domains", "seed", "batch_size", "sizes"))
    self.step = int(state["step"])
    self._weights = np.asarray(state["weights"], np.float64)
    self._residuals = np.asarray(state["residuals"], np.float64)
    self._consumed = self._consumed_from(state)
    self._history = [[int(s), list(w)] for s, w in state["weight_history"]]

  def continue_stream(self, state: Mapping) -> None:
    """Picks up another loader's stream (same seed and data) where it stopped: the rows it
    served are not served again. This loader keeps its own weights; with the same batch
    size and weights its batches are those the other loader would have served next."""
    self._check_state(state, "loader state to continue", ("version", "domains", "seed", "sizes"))
    self.step = int(state["step"])
    self._consumed = self._consumed_from(state)
    if state["batch_size"] == self.batch_size:
      self._residuals = np.asarray(state["residuals"], np.float64)
    self._history = [[self.step, self._weights.tolist()]]

  def checkpoint_args(self):
    """Orbax item for a Composite save: `ocp.args.Composite(data=loader.checkpoint_args(), ...)`."""
    import orbax.checkpoint as ocp
    return ocp.args.JsonSave(self.get_state())

  @staticmethod
  def restore_args():
    """Orbax item for the matching restore; pass the result to `set_state`."""
    import orbax.checkpoint as ocp
    return ocp.args.JsonRestore()


def eval_batches(source: Sequence, batch_size: int, process_index: int = 0, process_count: int = 1):
  """All rows of one domain's eval split in order, as fixed-shape batches.

  The last batch is filled with all-padding rows (segment id 0, which the loss
  masks), so every batch has the same shape and compiles once.
  """
  if batch_size % process_count:
    raise JShearError(f"batch_size: expected a multiple of process_count={process_count}, got {batch_size}")
  n, per_host = len(source), batch_size // process_count
  for start in range(0, n, batch_size):
    lo = start + process_index * per_host
    rows = [source[i] for i in range(lo, min(lo + per_host, n))]
    t = getattr(source, "seq_len", None) or len(source[0][0])
    pad = np.zeros((per_host - len(rows), 2, t), np.int32)
    block = np.concatenate([np.stack(rows), pad]) if rows else pad
    segs = np.ascontiguousarray(block[:, 1])
    yield {"tokens": np.ascontiguousarray(block[:, 0]), "segment_ids": segs,
           "positions": shards.positions_from_segments(segs)}
