import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import json
import logging

import numpy as np
import pytest

from jshear.data import shards
from jshear.data.mixture import MixtureLoader, compose, eval_batches
from jshear.errors import JShearError

T = 8
SIZES = {"a": 40, "b": 30, "c": 7}


def _domain(tmp_path, d, n, split_at=3):
  """Rows whose every token is 1000 * domain + row id; two documents per row."""
  base = 1000 * (list(SIZES).index(d) + 1)
  rows = np.zeros((n, 2, T), np.int32)
  rows[:, 0] = (base + np.arange(n))[:, None]
  rows[:, 1, :split_at] = 1
  rows[:, 1, split_at:] = 2
  paths = []
  for i, lo in enumerate(range(0, n, 16)):  # several shards per domain
    paths.append(str(tmp_path / f"{d}-{i}.npy"))
    shards.write_shard(paths[-1], rows[lo:lo + 16])
  return shards.ShardedSequences(paths)


@pytest.fixture
def sources(tmp_path):
  return {d: _domain(tmp_path, d, n) for d, n in SIZES.items()}


def _ids(batch):
  return batch["tokens"][:, 0].tolist()


def _counts(batch, k=3):
  return np.bincount(batch["domain"], minlength=k).tolist()


def test_batch_layout(sources):
  b = MixtureLoader(sources, [0.5, 0.3, 0.2], batch_size=10).next_batch()
  assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
      "tokens": ((10, T), np.int32), "segment_ids": ((10, T), np.int32),
      "positions": ((10, T), np.int32), "domain": ((10,), np.int32)}
  assert b["positions"][0].tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
  assert ((b["tokens"][:, 0] // 1000 - 1) == b["domain"]).all()  # rows come from their domain


def test_same_seed_same_batches_other_seed_differs(sources):
  run = lambda seed: [_ids(b) for b, _ in zip(MixtureLoader(sources, [0.4, 0.4, 0.2], 10, seed=seed), range(6))]
  assert run(1) == run(1)
  assert run(1) != run(2)
  mix = MixtureLoader(sources, [0.5, 0.5, 0.0], 10, seed=1)
  orders = {tuple(mix.next_batch()["domain"]) for _ in range(4)}
  assert len(orders) > 1  # rows are permuted afresh each batch, not domain-sorted


def test_exact_composition_and_weight_change(sources, caplog):
  mix = MixtureLoader(sources, [0.5, 0.3, 0.2], batch_size=10)
  assert [_counts(mix.next_batch()) for _ in range(3)] == [[5, 3, 2]] * 3
  mix.set_weights({"a": 0.1, "b": 0.6, "c": 0.3})  # takes effect at the very next batch
  assert _counts(mix.next_batch()) == [1, 6, 3]
  with caplog.at_level(logging.WARNING):
    mix.set_weights([2, 1, 1])  # normalised to 0.5/0.25/0.25, with a warning
  assert "normalising" in caplog.text
  got = [_counts(mix.next_batch()) for _ in range(4)]
  assert all(c[0] == 5 and sorted(c[1:]) == [2, 3] for c in got)  # 2.5 rounds alternate
  assert np.sum(got, axis=0).tolist() == [20, 10, 10]  # carried remainder: exact over time
  assert mix.get_state()["weight_history"] == [[0, [0.5, 0.3, 0.2]], [3, [0.1, 0.6, 0.3]],
                                               [4, [0.5, 0.25, 0.25]]]


def test_carry_keeps_long_run_totals_within_one():
  rng = np.random.default_rng(0)
  res = np.zeros(5)
  for stage in range(30):  # weights change between stages; tiny and zero weights included
    w = rng.dirichlet(np.ones(5) * 0.3)
    w[stage % 5], w[(stage + 1) % 5] = 0.0, 1e-4
    w /= w.sum()
    if stage % 2:
      res[:] = 0  # fresh carry: then every prefix is within one row of its target
    start, total, target = res.copy(), np.zeros(5), np.zeros(5)
    for _ in range(40):
      counts, res = compose(w, res, 7)
      assert counts.sum() == 7 and (counts >= 0).all() and counts[w == 0].sum() == 0
      total, target = total + counts, target + w * 7
      assert np.all(np.abs(total - target) < (1 if stage % 2 else 2) + 1e-9)
    np.testing.assert_allclose(total - target, np.where(w > 0, start - res, 0), atol=1e-6)


def test_bad_weights(sources):
  mix = MixtureLoader(sources, [1, 0, 0], batch_size=4)
  for w in ([-0.1, 0.6, 0.5], [float("nan"), 1, 0], [0, 0, 0], {"a": 1}, [1, 0]):
    with pytest.raises(JShearError):
      mix.set_weights(w)
  with pytest.raises(JShearError, match="process_count"):
    MixtureLoader(sources, [1, 0, 0], batch_size=5, process_count=2)


def test_state_roundtrip_gives_identical_next_batches(sources):
  full = MixtureLoader(sources, [0.5, 0.3, 0.2], batch_size=10, seed=3)
  for _ in range(4):
    full.next_batch()
  full.set_weights([0.45, 0.35, 0.2])
  full.next_batch()
  state = json.loads(json.dumps(full.get_state()))
  expect = [full.next_batch() for _ in range(6)]  # crosses epochs of domain c
  fresh = MixtureLoader(sources, [1, 0, 0], batch_size=10, seed=3)
  fresh.set_state(state)
  for e in expect:
    g = fresh.next_batch()
    assert all(np.array_equal(e[k], g[k]) for k in e)
  assert fresh.get_state() == full.get_state()
  with pytest.raises(JShearError, match="seed"):
    MixtureLoader(sources, [1, 0, 0], batch_size=10, seed=4).set_state(state)


def test_a_second_loader_continues_the_stream_without_repeating_rows(sources):
  first = MixtureLoader(sources, [0.5, 0.3, 0.2], batch_size=10, seed=3)
  for _ in range(3):
    first.next_batch()
  state = json.loads(json.dumps(first.get_state()))
  expect = [first.next_batch() for _ in range(4)]
  # Same batch size and weights: exactly the batches the first loader serves next.
  second = MixtureLoader(sources, [0.5, 0.3, 0.2], batch_size=10, seed=3)
  second.continue_stream(state)
  for e in expect:
    g = second.next_batch()
    assert all(np.array_equal(e[k], g[k]) for k in e)
  # Another batch size: it starts after the rows already served.
  other = MixtureLoader(sources, [0.5, 0.3, 0.2], batch_size=4, seed=3)
  other.continue_stream(state)
  assert other.get_state()["positions"] == state["positions"]
  assert other.get_state()["step"] == 3 and other.weights == second.weights
  with pytest.raises(JShearError, match="seed"):
    MixtureLoader(sources, [1, 0, 0], batch_size=10, seed=4).continue_stream(state)


def test_orbax_checkpoint_restores_next_batches(sources, tmp_path):
  import orbax.checkpoint as ocp
  mix = MixtureLoader(sources, [0.5, 0.3, 0.2], batch_size=10, seed=5)
  mix.next_batch()
  with ocp.CheckpointManager(tmp_path / "ckpt") as mgr:
    mgr.save(1, args=ocp.args.Composite(data=mix.checkpoint_args()))
    mgr.wait_until_finished()
  expect = [mix.next_batch() for _ in range(3)]
  with ocp.CheckpointManager(tmp_path / "ckpt") as mgr:
    state = mgr.restore(1, args=ocp.args.Composite(data=MixtureLoader.restore_args()))["data"]
  fresh = MixtureLoader(sources, [1, 0, 0], batch_size=10, seed=5)
  fresh.set_state(state)
  for e in expect:
    assert np.array_equal(fresh.next_batch()["tokens"], e["tokens"])


def test_two_processes_cover_disjoint_rows_whose_union_is_the_batch(sources):
  one = MixtureLoader(sources, [0.5, 0.3, 0.2], batch_size=10, seed=7)
  two = [MixtureLoader(sources, [0.5, 0.3, 0.2], batch_size=10, seed=7, process_index=p, process_count=2)
         for p in range(2)]
  for _ in range(3):
    whole, parts = one.next_batch(), [m.next_batch() for m in two]
    assert all(p["tokens"].shape == (5, T) for p in parts)
    for k in whole:
      assert np.array_equal(np.concatenate([p[k] for p in parts]), whole[k])
    a, b = (set(_ids(p)) for p in parts)
    assert not a & b and len(a | b) == 10


def test_epoch_wraparound_reshuffles_and_warns(sources, caplog):
  mix = MixtureLoader(sources, [0, 0, 1], batch_size=7, seed=0)  # domain c has 7 rows
  with caplog.at_level(logging.WARNING):
    e0, e1 = _ids(mix.next_batch()), _ids(mix.next_batch())
  assert sorted(e0) == sorted(e1) == [3000 + i for i in range(7)]  # each epoch: every row once
  assert e0 != e1
  assert "domain c starts epoch 1" in caplog.text
  assert mix.get_state()["epochs"] == [0, 0, 2] and mix.get_state()["positions"] == [0, 0, 0]


def test_eval_batches_pad_the_last_batch(sources):
  got = list(eval_batches(sources["c"], batch_size=4))
  assert len(got) == 2 and got[1]["tokens"].shape == (4, T)
  assert got[1]["segment_ids"][3].tolist() == [0] * T  # padding row: masked by the loss
  assert np.concatenate([b["tokens"][:, 0] for b in got])[:7].tolist() == [3000 + i for i in range(7)]
