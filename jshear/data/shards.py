"""On-disk token shards: packing documents into fixed-length rows, and reading them.

Format: one `.npy` per shard holding int32 `[n, 2, seq_len]`; `[:, 0]` are the
tokens and `[:, 1]` the segment ids (1, 2, ... per document inside a row, 0 for
padding). Why plain `.npy` rather than tensorstore/zarr: `np.load(mmap_mode="r")`
gives zero-copy views straight out of the page cache, a row is one contiguous read
(tokens and segments side by side), random access needs no chunk decoding, the
memmap is fork-safe for grain workers, and nothing beyond numpy is needed to read
it. Tokens and segments share one file so a single rename publishes a whole shard.
"""

from typing import Iterable, Iterator

import numpy as np

from jshear.atomic import atomic_write
from jshear.errors import JShearError


def shard_name(split: str, index: int) -> str:
  return f"{split}-{index:05d}.npy"


def write_shard(path: str, rows: np.ndarray) -> None:
  """Writes temp-then-rename (`jshear.atomic`) so a killed run never leaves a half shard."""
  with atomic_write(path, "wb") as f:
    np.save(f, np.ascontiguousarray(rows, dtype=np.int32))


def pack(docs: Iterable[np.ndarray], seq_len: int, rows_per_shard: int,
         pad_id: int = 0) -> Iterator[np.ndarray]:
  """Concatenates documents and cuts them into `[n, 2, seq_len]` shards.

  Documents run across row boundaries (no tokens are wasted); the part of a
  document that starts a row gets segment id 1 there, so attention and positions
  restart at every row. Only the last row of the last shard is padded.
  """
  shard_tokens = seq_len * rows_per_shard
  toks, ids, size, doc = [], [], 0, 0

  def cut(n_tok):
    nonlocal toks, ids, size
    t, d = np.concatenate(toks), np.concatenate(ids)
    toks, ids, size = [t[n_tok:]], [d[n_tok:]], len(t) - n_tok
    return t[:n_tok], d[:n_tok]

  def rows(t, d):
    n = -(-len(t) // seq_len)
    out = np.zeros((n, 2, seq_len), np.int32)
    tok = np.full(n * seq_len, pad_id, np.int32)
    tok[:len(t)] = t
    did = np.full(n * seq_len, -1, np.int64)
    did[:len(d)] = d
    did = did.reshape(n, seq_len)
    out[:, 0] = tok.reshape(n, seq_len)
    out[:, 1] = np.where(did >= 0, did - did[:, :1] + 1, 0)
    return out

  for d in docs:
    if len(d) == 0:
      continue
    toks.append(np.asarray(d, np.int32))
    ids.append(np.full(len(d), doc, np.int64))
    doc += 1
    size += len(d)
    while size >= shard_tokens:
      yield rows(*cut(shard_tokens))
  if size:
    yield rows(*cut(size))


def positions_from_segments(segs: np.ndarray) -> np.ndarray:
  """Position inside each segment, restarting at every document (0 on padding)."""
  t = segs.shape[-1]
  idx = np.broadcast_to(np.arange(t, dtype=np.int32), segs.shape)
  start = np.ones(segs.shape, bool)
  start[..., 1:] = segs[..., 1:] != segs[..., :-1]
  first = np.maximum.accumulate(np.where(start, idx, 0), axis=-1)
  return np.where(segs > 0, idx - first, 0).astype(np.int32)


class ShardedSequences:
  """Random-access view over a list of shards: item i is an int32 `[2, seq_len]` view.

  Satisfies grain's RandomAccessDataSource protocol (`__len__`, `__getitem__`).
  """

  def __init__(self, paths: list[str]):
    self.paths = list(paths)
    self._arrays = []
    for p in self.paths:
      a = np.load(p, mmap_mode="r")
      if a.ndim != 3 or a.shape[1] != 2 or a.dtype != np.int32:
        raise JShearError(f"{p}: expected an int32 [n, 2, seq_len] shard, got {a.dtype} {a.shape}")
      self._arrays.append(a)
    lens = {a.shape[2] for a in self._arrays}
    if len(lens) > 1:
      raise JShearError(f"shards {self.paths}: expected one seq_len, got {sorted(lens)}")
    self.seq_len = lens.pop() if lens else 0
    self._ends = np.cumsum([len(a) for a in self._arrays], dtype=np.int64)

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def __getitem__(self, i: int) -> np.ndarray:
    n = len(self)
    i = int(i) % n if n else int(i)
    j = int(np.searchsorted(self._ends, i, side="right"))
    base = int(self._ends[j - 1]) if j else 0
    return self._arrays[j][i - base]

  def __repr__(self) -> str:
    return f"ShardedSequences({len(self.paths)} shards, {len(self)} rows)"
