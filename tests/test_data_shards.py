import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import numpy as np
import pytest

from jshear.data import shards
from jshear.errors import JShearError


def test_pack_cuts_documents_across_rows_and_restarts_segments():
  docs = [np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8]), np.array([], np.int32), np.array([9])]
  got = list(shards.pack(docs, seq_len=4, rows_per_shard=2, pad_id=0))
  assert [g.shape for g in got] == [(2, 2, 4), (1, 2, 4)]
  rows = np.concatenate(got)
  assert rows[:, 0].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 0, 0, 0]]
  assert rows[:, 1].tolist() == [[1, 1, 1, 2], [1, 1, 1, 1], [1, 0, 0, 0]]
  assert shards.positions_from_segments(rows[:, 1]).tolist() == [[0, 1, 2, 0], [0, 1, 2, 3], [0, 0, 0, 0]]


def test_sharded_sequences_index_across_files(tmp_path):
  paths = []
  for i, n in enumerate([3, 1, 2]):
    rows = np.zeros((n, 2, 4), np.int32)
    rows[:, 0] = (10 * i + np.arange(n))[:, None]
    paths.append(str(tmp_path / shards.shard_name("train", i)))
    shards.write_shard(paths[-1], rows)
  src = shards.ShardedSequences(paths)
  assert len(src) == 6 and src.seq_len == 4
  assert [int(src[i][0, 0]) for i in range(7)] == [0, 1, 2, 10, 20, 21, 0]  # wraps like grain sources
  assert not any(p.endswith(".tmp") for p in os.listdir(tmp_path))
  np.save(tmp_path / "bad.npy", np.zeros((2, 4), np.int64))
  with pytest.raises(JShearError, match="bad.npy: expected an int32"):
    shards.ShardedSequences([str(tmp_path / "bad.npy")])
