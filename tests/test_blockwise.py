"""Blockwise local distillation (jshear/blockwise.py, jshear/train/blocks.py): the spans a
layer map gives, recorded streams against the source's own residual streams, a recording
that resumes, one block's loss falling, and parallel (vmap over a sharded block axis)
against sequential block training on 1 and 8 devices."""

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from jshear import blockwise as bw
from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.model.params import init_params
from jshear.model.transformer import forward
from jshear.prune.finalize import finalize, kept_indices
from jshear.train.blocks import row_draws, train_blocks

SRC = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=5,
                  num_heads=4, num_kv_heads=2, head_dim=8)
T = 16


def _masks():
  hidden = np.ones(SRC.hidden_size, np.float32)
  hidden[[3, 10, 17, 30]] = 0.0
  hidden[[0, 5]] = 0.8        # soft values: the recording must carry them
  inter = np.ones((SRC.num_layers, SRC.intermediate_size), np.float32)
  inter[:, ::3] = 0.0
  return {"layer": np.array([0, 1, 0, 1, 1], np.float32), "hidden": hidden,
          "intermediate": inter}


def _rows(n, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, SRC.vocab_size, (n, T))
  seg = np.ones((n, T), np.int32)
  seg[::2, T // 2:] = 2          # two documents in every other row
  seg[1::4, -3:] = 0             # and some padding
  pos = np.concatenate([np.arange(T // 2), np.arange(T // 2)])[None].repeat(n, 0)
  pos[1::2] = np.arange(T)
  return {"tokens": tokens.astype(np.int32), "segment_ids": seg, "positions": pos.astype(np.int32)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  params = init_params(SRC, jax.random.PRNGKey(0))
  masks = _masks()
  keep = kept_indices(SRC, masks)
  pruned_cfg, pruned = finalize(SRC, params, masks)
  spans = bw.spans(SRC.num_layers, keep["layers"])
  rows = _rows(12)
  out = str(tmp_path_factory.mktemp("rec"))
  bw.record(SRC, params, rows, spans, out, hidden_keep=keep["hidden"],
            hidden_scale=masks["hidden"][keep["hidden"]], batch_size=5)
  return dict(params=params, masks=masks, keep=keep, cfg=pruned_cfg, pruned=pruned,
              spans=spans, rows=rows, out=out)


def test_spans_merge_dropped_layers_into_the_kept_layer_before_them():
  assert bw.spans(5, [1, 3, 4]) == [(0, 3), (3, 4), (4, 5)]
  assert bw.spans(4, [0, 1, 2, 3]) == [(0, 1), (1, 2), (2, 3), (3, 4)]
  assert bw.spans(6, [0, 2]) == [(0, 2), (2, 6)]
  assert bw.boundary_sources([(0, 3), (3, 4), (4, 5)]) == [-1, 2, 3, 4]
  for bad in ([], [2, 1], [0, 5], [1, 1]):
    with pytest.raises(JShearError):
      bw.spans(5, bad)


def test_recorded_streams_are_the_sources_own_at_each_span_end(world):
  """Boundary j holds the source's stream after the last layer of span j - 1 (the embedding
  for j = 0), at the kept channels, times the hidden mask there; recorded 5 rows at a time,
  compared with one forward over all rows."""
  rec = bw.Recording(world["out"])
  rows = {k: jnp.asarray(v) for k, v in world["rows"].items()}
  _, hidden = forward(world["params"], rows["tokens"], cfg=SRC, positions=rows["positions"],
                      segment_ids=rows["segment_ids"], return_hidden=True)
  keep, z = world["keep"]["hidden"], world["masks"]["hidden"][world["keep"]["hidden"]]
  want = [np.asarray(world["params"]["embed"])[world["rows"]["tokens"]]]
  want += [np.asarray(hidden[end - 1]) for _, end in world["spans"]]  # spans (0,3) (3,4) (4,5)
  assert [end - 1 for _, end in world["spans"]] == [2, 3, 4]
  assert len(rec.maps) == len(want) == 4
  for got, w in zip(rec.maps, want):
    np.testing.assert_allclose(np.asarray(got), w[..., keep] * z, atol=1e-6, rtol=0)
  b = rec.batch([7, 2])
  np.testing.assert_array_equal(b["x"][1], np.asarray(rec.maps[1])[[2, 7]])
  np.testing.assert_array_equal(b["y"][1], np.asarray(rec.maps[2])[[2, 7]])
  assert b["tokens"].shape == (3, 2, T)


def test_a_killed_recording_resumes_to_the_same_bits(world, tmp_path, monkeypatch):
  calls = {"n": 0}
  real = bw.write_json

  def die_after_one(path, obj):
    real(path, obj)
    calls["n"] += 1
    if calls["n"] == 1:
      raise KeyboardInterrupt("killed")

  monkeypatch.setattr(bw, "write_json", die_after_one)
  args = (SRC, world["params"], world["rows"], world["spans"], str(tmp_path))
  kw = dict(hidden_keep=world["keep"]["hidden"],
            hidden_scale=world["masks"]["hidden"][world["keep"]["hidden"]], batch_size=5)
  with pytest.raises(KeyboardInterrupt):
    bw.record(*args, **kw)
  with pytest.raises(JShearError, match="incomplete"):
    bw.Recording(str(tmp_path))
  seen = []
  bw.record(*args, **kw, progress=lambda done, n: seen.append(done))
  assert seen == [10, 12]    # the first chunk was not recorded again
  a, b = bw.Recording(str(tmp_path)), bw.Recording(world["out"])
  for x, y in zip(a.maps, b.maps):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  with pytest.raises(JShearError, match="other rows"):
    bw.record(SRC, world["params"], _rows(12, seed=1), world["spans"], str(tmp_path), **kw)


def _tc(lr=3e-3, clip=1.0):
  # Puzzle's BLD defaults but the lr (raised: a few steps on a tiny model)
  return mlc.ConfigDict(dict(lr=lr, schedule="cosine", warmup_steps=1, final_lr_fraction=0.1,
                             weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, clip_norm=clip))


def test_training_a_block_drives_its_normalised_mse_down(world):
  rec = bw.Recording(world["out"])
  hist = train_blocks(world["cfg"], world["pruned"]["layers"], rec, _tc(), steps=25,
                      batch_size=4, devices=jax.devices()[:1]).history
  assert hist.shape == (25, 3)
  assert np.all(hist[-5:].mean(0) < 0.5 * hist[:3].mean(0)), hist


def test_parallel_and_sequential_block_training_agree_on_1_and_8_devices(world):
  assert jax.device_count() == 8
  rec = bw.Recording(world["out"])
  layers = world["pruned"]["layers"]
  kw = dict(steps=4, batch_size=3, seed=2)
  seq, hs, _ = train_blocks(world["cfg"], layers, rec, _tc(), sequential=True, **kw)
  for devices in (jax.devices()[:1], jax.devices()):   # 3 blocks on 8 devices: 5 padded slots
    par, hp, _ = train_blocks(world["cfg"], layers, rec, _tc(), devices=devices, **kw)
    np.testing.assert_allclose(hp, hs, rtol=1e-5)
    for name in layers:
      np.testing.assert_allclose(np.asarray(par[name]), np.asarray(seq[name]), atol=2e-6,
                                 rtol=1e-5, err_msg=name)
  moved = {n: float(jnp.max(jnp.abs(seq[n] - layers[n]))) for n in layers}
  assert min(moved.values()) > 0, moved


def test_killed_block_training_resumes_at_its_checkpoint_to_the_same_bits(world, tmp_path,
                                                                         monkeypatch):
  """Killed after its step-2 save; rerun: it starts at step 2 and ends at the bits and loss
  history of a run never interrupted. The saved blocks are unpadded, so a rerun on another
  device count restores them too."""
  from jshear.checkpoint import Checkpointer
  rec, layers = bw.Recording(world["out"]), world["pruned"]["layers"]
  kw = dict(steps=5, batch_size=3, seed=1)
  straight = train_blocks(world["cfg"], layers, rec, _tc(), **kw)
  real = Checkpointer.save

  def die_after_first_save(self, step, state, extra, force=False):
    real(self, step, state, extra, force)
    self.wait()
    raise KeyboardInterrupt("killed")

  monkeypatch.setattr(Checkpointer, "save", die_after_first_save)
  ck = str(tmp_path / "ck")
  with pytest.raises(KeyboardInterrupt):
    train_blocks(world["cfg"], layers, rec, _tc(), ckpt_dir=ck, ckpt_every=2, **kw)
  monkeypatch.setattr(Checkpointer, "save", real)
  resumed = train_blocks(world["cfg"], layers, rec, _tc(), ckpt_dir=ck, ckpt_every=2, **kw)
  assert resumed.resumed_from == 2
  np.testing.assert_array_equal(resumed.history, straight.history)
  for name in layers:
    np.testing.assert_array_equal(np.asarray(resumed.layers[name]),
                                  np.asarray(straight.layers[name]), err_msg=name)
  again = train_blocks(world["cfg"], layers, rec, _tc(), ckpt_dir=ck, ckpt_every=2,
                       devices=jax.devices()[:1], **kw)
  assert again.resumed_from == 5   # finished: nothing left to train
  np.testing.assert_array_equal(np.asarray(again.layers["w_up"]),
                                np.asarray(straight.layers["w_up"]))


def test_mlp_only_leaves_attention_bitwise_and_refuses_the_parallel_family(world):
  rec = bw.Recording(world["out"])
  layers = world["pruned"]["layers"]
  out = train_blocks(world["cfg"], layers, rec, _tc(), steps=2, batch_size=2,
                     mode="mlp_only", devices=jax.devices()[:1]).layers
  for name in layers:
    same = np.array_equal(np.asarray(out[name]), np.asarray(layers[name]))
    assert same == (name not in bw.MLP_LEAVES), name
  with pytest.raises(JShearError, match="parallel"):
    bw.block_groups(SRC.replace(family="parallel"), "mlp_only")
  with pytest.raises(JShearError, match="blockwise.mode"):
    bw.block_groups(SRC, "ffn")


def test_row_draws_cover_every_row_once_a_pass():
  d = row_draws(10, 4, 5, seed=0)
  assert sorted(np.concatenate(d[:2]).tolist() + d[2][:2].tolist()) == list(range(10))
  assert [len(x) for x in d] == [4] * 5
  assert bw.device_assignment(3, 8) == [[0], [1], [2], [], [], [], [], []]
  assert bw.device_assignment(9, 4) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], []]


# ---- the stage ---------------------------------------------------------------------------

def test_the_stage_runs_between_finalize_and_continue(tmp_path):
  """prune (magnitude, one shot) -> finalize -> blockwise -> continue on the tiny world: the
  blockwise model keeps finalize's embeddings and head, its blocks moved and their loss fell,
  and continue trains from it (its dir is what a rerun loads instead of training again)."""
  import os

  import tiny_world
  from jshear import model_io
  from jshear.train.pipeline import run
  world = tiny_world.build(tmp_path / "world")
  c = tiny_world.config(world)
  c.stages = "prune,finalize,blockwise,continue"
  from jshear.config_base import base_config
  c.prune.method, c.final_eval = "magnitude", False
  c.prune.learned = base_config().prune.learned   # magnitude reads none of these
  c.continued.steps = 2
  c.blockwise.update(rows_per_domain=4, steps=12, batch_size=4, lr=3e-3)
  wd = str(tmp_path / "run")
  run(c, wd)
  _, pruned = model_io.load_model(os.path.join(wd, "pruned"))
  _, blocks = model_io.load_model(os.path.join(wd, "stitched"))
  np.testing.assert_array_equal(np.asarray(blocks["embed"]), np.asarray(pruned["embed"]))
  moved = [n for n in pruned["layers"]
           if not np.array_equal(np.asarray(blocks["layers"][n]), np.asarray(pruned["layers"][n]))]
  assert moved, "no block weight moved"
  import json
  rec = json.load(open(os.path.join(wd, "stitched", "blockwise.json")))
  assert len(rec["spans"]) == c.prune.target.num_layers
  assert np.mean(rec["nmse_last"]) < np.mean(rec["nmse_first"]), rec
  assert os.path.exists(os.path.join(wd, "continued"))
  mtime = os.path.getmtime(os.path.join(wd, "stitched", "blockwise.json"))
  run(c, wd)   # done: loaded, not trained again
  assert os.path.getmtime(os.path.join(wd, "stitched", "blockwise.json")) == mtime


def test_bad_blockwise_keys_are_named():
  from jshear.config_base import base_config
  from jshear.config_check import problems
  c = base_config()
  assert problems(c) == []
  c.blockwise.mode, c.blockwise.lr, c.blockwise.rows_per_domain = "ffn", -1.0, 0
  found = " ".join(problems(c))
  for key in ("blockwise.mode='ffn'", "blockwise.lr=-1.0", "blockwise.rows_per_domain=0"):
    assert key in found, found
