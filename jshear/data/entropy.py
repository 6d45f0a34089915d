"""Per-domain token statistics for training-free mixtures (BiMix): the unigram entropy
H(X) and the conditional entropy H(X_{t+1} | X_t) of a domain's packed training rows.

Counting streams over rows a chunk at a time, so memory is O(V + buckets) whatever the
domain's size: unigram counts are exact (one counter per vocabulary id); bigram counts are
exact while V^2 <= buckets and hashed into `buckets` counters otherwise.

Why hashing can only lower the estimate, and by how much. Merging pairs that share a bucket
is a function of the pair, so the hashed joint entropy is <= the exact one, and the
conditional entropy H(X, Y) - H(X) (H(X) exact) is underestimated by
H(XY | bucket) = sum_x p_x ln(1 + q_x / p_x), q_x the other pairs' mass in x's bucket. For a
random hash E[q_x] = (1 - p_x) / M, so by Jensen (twice) the expected error is at most
ln(1 + (D - 1) / M) for D distinct pairs and M buckets: `bound` below, with D estimated by
linear counting from the share of buckets in use. 2^24 buckets keep it under 0.01 nats up to
~170k distinct pairs and under 0.1 up to 1.8M; raise `buckets` for bigger domains (the
table prints the bound, so a loose one shows).

Pairs are counted inside documents only (the same nonzero segment id at t and t + 1), so row
padding and document boundaries add no false bigrams; a document cut across two rows loses
the one pair at the cut.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from jshear.config_check import DOMAIN_WEIGHTS_FROM

VERSION = 2  # of the statistics record (a cache of an older one is counted again)
DEFAULT_BUCKETS = 1 << 24
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: multiply, keep the top bits
_CHUNK_TOKENS = 1 << 20   # rows are counted about a million tokens at a time


def entropy(counts: np.ndarray) -> float:
  """Plug-in entropy (nats) of a vector of counts."""
  c = np.asarray(counts, np.float64)
  c = c[c > 0]
  n = c.sum()
  if n == 0:
    return 0.0
  return float(math.log(n) - (c * np.log(c)).sum() / n)


class BigramCounter:
  """Streaming unigram and (hashed) bigram counts over packed [n, 2, T] rows."""

  def __init__(self, vocab_size: int, buckets: int = DEFAULT_BUCKETS):
    if buckets < 2 or buckets & (buckets - 1):
      raise ValueError(f"buckets must be a power of two >= 2, got {buckets}")
    self.vocab_size = int(vocab_size)
    self.exact = self.vocab_size ** 2 <= buckets
    self.buckets = self.vocab_size ** 2 if self.exact else int(buckets)
    self._shift = None if self.exact else np.uint64(64 - int(math.log2(self.buckets)))
    self.unigram = np.zeros(self.vocab_size, np.int64)   # every document token
    self.first = np.zeros(self.vocab_size, np.int64)     # X_t of each counted pair
    self.pairs = np.zeros(self.buckets, np.int64)

  def _bucket(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    code = x.astype(np.uint64) * np.uint64(self.vocab_size) + y.astype(np.uint64)
    if self.exact:
      return code.astype(np.int64)
    return ((code * _GOLDEN) >> self._shift).astype(np.int64)  # uint64 products wrap

  def add_rows(self, rows: np.ndarray) -> None:
    """rows: int [n, 2, T] (tokens, segment ids; 0 = padding)."""
    step = max(1, _CHUNK_TOKENS // max(rows.shape[-1], 1))
    for s in range(0, len(rows), step):
      r = np.asarray(rows[s:s + step])
      tok, seg = r[:, 0], r[:, 1]
      if tok.size and (tok.min() < 0 or tok.max() >= self.vocab_size):
        raise ValueError(f"token ids outside [0, {self.vocab_size})")
      self.unigram += np.bincount(tok[seg > 0], minlength=self.vocab_size)
      same = (seg[:, :-1] == seg[:, 1:]) & (seg[:, :-1] > 0)
      x, y = tok[:, :-1][same], tok[:, 1:][same]
      self.first += np.bincount(x, minlength=self.vocab_size)
      b = self._bucket(x, y)
      if len(b) * 8 < self.buckets:  # sparse: sort the chunk rather than sweep every bucket
        u, c = np.unique(b, return_counts=True)
        self.pairs[u] += c
      else:
        self.pairs += np.bincount(b, minlength=self.buckets)

  def stats(self) -> dict:
    """The manifest record: tokens, pairs, entropies (nats) and the hashing bound."""
    n_pairs = int(self.first.sum())
    used = int(np.count_nonzero(self.pairs))
    if self.exact:
      distinct, bound = used, 0.0
    else:
      free = 1.0 - used / self.buckets
      distinct = self.buckets * -math.log(free) if free > 0 else float("inf")
      bound = math.log1p(max(distinct - 1, 0) / self.buckets)
    h_first = entropy(self.first)
    # Miller-Madow: the plug-in estimate is low by about (cells - 1) / 2N, for the joint and
    # the marginal alike, so the conditional is low by (D - distinct X_t) / 2N; a small
    # domain with many distinct pairs is lowered most (recorded, not used by the weights)
    mm = ((distinct - np.count_nonzero(self.first)) / (2 * n_pairs)
          if n_pairs and math.isfinite(distinct) else 0.0)
    return {"version": VERSION, "tokens": int(self.unigram.sum()), "pairs": n_pairs,
            "unigram_entropy": entropy(self.unigram),
            # clipped: hashing can only lower the joint entropy, never below H(X_t)
            "conditional_entropy": max(entropy(self.pairs) - h_first, 0.0),
            "plugin_bias_estimate": float(mm),
            "conditional_entropy_bound": bound, "distinct_pairs": int(round(distinct))
            if math.isfinite(distinct) else None,
            "buckets": self.buckets, "hashed": not self.exact}


def rows_stats(row_arrays: Iterable[np.ndarray], vocab_size: int,
               buckets: int = DEFAULT_BUCKETS) -> dict:
  """`BigramCounter.stats()` of a domain given its shards' row arrays (e.g. memmaps)."""
  counter = BigramCounter(vocab_size, buckets)
  for rows in row_arrays:
    counter.add_rows(rows)
  return counter.stats()


def shard_stats(paths: Iterable[str], vocab_size: int, buckets: int = DEFAULT_BUCKETS) -> dict:
  """Statistics of a domain's shard files, read through memmaps one chunk at a time."""
  return rows_stats((np.load(p, mmap_mode="r") for p in paths), vocab_size, buckets)


# -- from entropies to a mixture ----------------------------------------------

WEIGHT_MODES = tuple(m for m in DOMAIN_WEIGHTS_FROM if m)


def entropy_weights(entropies: dict, mode: str, temperature: float = 1.0) -> dict:
  """Domain weights from conditional entropies (BiMix's training-free mixture; its mapping
  is not published, so two are offered): `entropy` w_i = H_i / sum H; `entropy_softmax`
  w_i = softmax(H / temperature)_i."""
  names = sorted(entropies)
  h = np.array([float(entropies[d]) for d in names])
  if mode == "entropy":
    w = h / h.sum() if h.sum() > 0 else np.full(len(h), 1.0 / len(h))
  elif mode == "entropy_softmax":
    if not temperature > 0:
      raise ValueError(f"temperature must be > 0, got {temperature}")
    z = np.exp((h - h.max()) / temperature)
    w = z / z.sum()
  else:
    raise ValueError(f"mode must be one of {WEIGHT_MODES}, got {mode!r}")
  return {d: float(x) for d, x in zip(names, w)}
