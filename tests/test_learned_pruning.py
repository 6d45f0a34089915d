"""Learned pruning end to end on a tiny real world: it reaches the target and beats random
masks; the finalized model is the one evaluated at the end of pruning (tied source too); a
later `continue` uses the recorded source; stages draw their own data; a new method
invalidates the old masks."""

import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

import tiny_world
from jshear.config_base import reset_unread_blocks
from jshear import model_io
from jshear import sharding as shd
from jshear.errors import JShearError
from jshear.metrics import read_metrics
from jshear.model.transformer import forward
from jshear.prune.deterministic import deterministic_masks
from jshear.train import stages
from jshear.train.loop import Context, restore_final_state
from jshear.train.pipeline import run
from jshear.train.stages.choosers import prune_spec
from jshear.train.stages.common import load_any


def _learned_config(world, steps=24, recipe=True):
  """The tiny world's learned pruning; `recipe`: the small-budget recipe the demo uses
  (importance-initialised gates, wide clamp bounds, size control by projection)."""
  cfg = tiny_world.config(world)
  p = cfg.prune
  lc = p.learned
  p.steps, lc.target_warmup_steps, p.eval_every, p.ckpt_every = steps, steps // 3, steps, steps
  if recipe:
    lc.mask_init, lc.size_control, lc.log_alpha_bounds = "importance", "projection", (-10.0, 10.0)
    lc.target_warmup_steps, p.calib.rows = 0, 4
  cfg.stages, cfg.final_eval = "prune,finalize", True
  return cfg


def _trained(world, workdir):
  """The tiny world with its random source trained briefly, so that it is better than
  uniform guessing (pruning must then stay below ln(vocab))."""
  cfg = tiny_world.config(world)
  cfg.stages, cfg.final_eval = "continue", False
  k = cfg.continued
  k.steps, k.lr, k.warmup_steps, k.eval_every, k.ckpt_every, k.log_every = 60, 3e-3, 5, 0, 60, 60
  k.reweight_rule = "constant"
  run(cfg, workdir)
  return dict(world, hf=os.path.join(workdir, "continued"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  w = tiny_world.build(tmp_path_factory.mktemp("world"))
  return _trained(w, str(tmp_path_factory.mktemp("trained")))


@pytest.fixture(scope="module")
def learned(world, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("learned"))
  return workdir, run(_learned_config(world), workdir)


def _mean(losses):
  return float(np.mean(list(losses.values())))


def test_learned_masks_reach_the_target_and_beat_random_masks(world, learned, tmp_path):
  workdir, summary = learned
  recs = [r for r in read_metrics(workdir) if r["stage"] == "prune" and "lm_loss" in r]
  assert len(recs) == 24
  source = [r for r in read_metrics(os.path.dirname(world["hf"])) if "lm_loss" in r][-1]
  assert source["lm_loss"] < math.log(256) - 0.5  # the trained source beats guessing
  assert all(math.isfinite(r["lm_loss"]) and r["lm_loss"] < math.log(256) for r in recs)
  last = recs[-1]
  for g in ("layer", "kv", "intermediate", "hidden"):
    want, got = last[f"prune/{g}/target_size"], last[f"prune/{g}/expected_size"]
    assert abs(got - want) <= 1e-4 * want, (g, got, want)  # projection: exact sizes
  cfg = _learned_config(world)
  cfg.prune.method = "random"
  reset_unread_blocks(cfg)  # the tiny world's learned knobs
  rand = run(cfg, str(tmp_path / "random"))
  assert _mean(summary["eval"]["final"]) < _mean(rand["eval"]["final"])


def test_reference_lagrangian_overshoots_at_this_budget(world, tmp_path):
  # What the recipe fixes, kept visible: with the reference's Lagrangian and uniform start,
  # 24 steps end far below the target (the README's stability table).
  workdir = str(tmp_path / "ref")
  run(_learned_config(world, recipe=False), workdir)
  last = [r for r in read_metrics(workdir) if r["stage"] == "prune" and "lm_loss" in r][-1]
  assert last["prune/intermediate/expected_size"] < 0.7 * last["prune/intermediate/target_size"]


def _batch(world, rows=4):
  from jshear.data.mixture import domain_sources
  src = domain_sources(world["data"], "eval")
  r = np.stack([np.asarray(src[d][0]) for d in sorted(src)][:rows])
  from jshear.data.shards import positions_from_segments
  return r[:, 0], r[:, 1], positions_from_segments(r[:, 1])


def test_tied_source_finalizes_to_the_model_evaluated_at_the_end_of_pruning(tmp_path):
  world = _trained(tiny_world.build(tmp_path / "world", tied=True), str(tmp_path / "trained"))
  cfg = _learned_config(world, steps=6, recipe=False)  # soft kept values: the harder case
  workdir = str(tmp_path / "run")
  run(cfg, workdir)
  assert load_any(world["hf"], cfg).cfg.tie_embeddings
  saved = _finalized_is_the_last_evaluated(world, cfg, workdir)
  assert set(np.unique(saved["hidden"])) <= {0.0, 1.0}  # kept hidden channels at 1: tie kept
  assert len(np.unique(saved["intermediate"])) > 2  # the other groups keep soft values


def test_straight_through_gates_train_and_finalize_whole_units(world, tmp_path, monkeypatch):
  cfg = _learned_config(world, steps=6)
  cfg.prune.learned.update(gate_forward="deterministic", mask_init_band=0.25,
                           mask_init_band_groups="intermediate")
  workdir = str(tmp_path / "run")
  from jshear.train import loop
  seen = []  # the gate logits the loop counted flips on: at the start, then at every log
  real_kept = loop.kept_units
  monkeypatch.setattr(loop, "kept_units",
                      lambda ps: seen.append(jax.tree.map(np.array, ps)) or real_kept(ps))
  run(cfg, workdir)
  saved = _finalized_is_the_last_evaluated(world, cfg, workdir)
  for g in saved:  # the band's kept units would be at scores 0.5-0.97 otherwise
    assert set(np.unique(saved[g])) == {0.0, 1.0}, g
  # The logged flips count every unit that changed sides: at least those whose final side
  # differs from the start (importance's choice, which the band starts from).
  src = load_any(world["hf"], cfg)
  scores = np.load(os.path.join(workdir, "scores.npz"))
  start = deterministic_masks({"intermediate": scores["intermediate"]}, src.cfg,
                              prune_spec(cfg, src.cfg).target, binary=True)["intermediate"]
  crossed = int(np.sum((np.asarray(start) > 0) != (saved["intermediate"] > 0)))
  flips = [r["prune/intermediate/flips"] for r in read_metrics(workdir)
           if r["stage"] == "prune" and "lm_loss" in r]
  assert len(flips) == 6 and crossed > 0 and sum(flips) >= crossed, (flips, crossed)
  # Exactly: each log's flips are the units whose side changed since the previous log,
  # group by group (0 where nothing moved: only the band's MLP units can).
  logs = [r for r in read_metrics(workdir) if r["stage"] == "prune" and "lm_loss" in r]
  assert len(seen) == len(logs) + 1
  sides = [{g: np.asarray(m) > 0 for g, m in deterministic_masks(
      ps.ranking(), ps.src, ps.target, binary=True).items()} for ps in seen]
  for k, rec in enumerate(logs):
    for g in sides[0]:
      want = int(np.sum(sides[k + 1][g] != sides[k][g]))
      assert rec[f"prune/{g}/flips"] == want, (k, g)
      if g != "intermediate":
        assert want == 0, g
  assert sum(r["prune/intermediate/flips"] for r in logs) > 0


def _finalized_is_the_last_evaluated(world, cfg, workdir):
  """Asserts that the saved masks are the end-of-pruning deterministic masks and the
  finalized model's logits equal the masked model's; returns the saved masks."""
  src = load_any(world["hf"], cfg)
  mesh = shd.make_mesh(dict(cfg.mesh.ici), dict(cfg.mesh.dcn))
  with jax.set_mesh(mesh):
    ctx = Context(cfg=cfg, workdir=workdir, mesh=mesh, writer=None, data_dir=world["data"])
    state = restore_final_state(ctx, stages.get("prune"), src.cfg, prune_spec(cfg, src.cfg))
    from jshear.prune.state import eval_masks
    masks = jax.device_get(eval_masks(jax.tree.map(shd.to_host, state["prune"])))
    params = jax.device_get(state["params"])
  saved = np.load(os.path.join(workdir, "masks", "masks.npz"))
  for g, m in masks.items():  # what finalize reads is what the evaluations used
    np.testing.assert_array_equal(saved[g], np.asarray(m))
  tokens, seg, pos = _batch(world)
  masked = forward(params, tokens, masks, cfg=src.cfg, positions=pos, segment_ids=seg)
  pcfg, pparams = model_io.load_model(os.path.join(workdir, "pruned"))
  assert pcfg.tie_embeddings == src.cfg.tie_embeddings
  assert pcfg.tie_embeddings == ("lm_head" not in pparams)
  final = forward(pparams, tokens, None, cfg=pcfg, positions=pos, segment_ids=seg)
  np.testing.assert_allclose(np.asarray(final), np.asarray(masked), atol=1e-5, rtol=0)
  return {g: saved[g] for g in saved.files}


def _continue_config(world, pruned, **distill):
  cfg = tiny_world.config(world)
  cfg.stages, cfg.init_from, cfg.final_eval = "continue", pruned, False
  cfg.model.source = ""
  k = cfg.continued
  k.steps, k.eval_every, k.ckpt_every, k.log_every = 1, 0, 1, 1
  cfg.distill.update(enable=True, **distill)
  return cfg


def test_continue_from_a_pruned_dir_distills_from_the_recorded_source(world, learned, tmp_path):
  workdir, _ = learned
  pruned = os.path.join(workdir, "pruned")
  with open(os.path.join(pruned, "origin.json")) as f:
    origin = json.load(f)
  assert origin["source"] == os.path.abspath(world["hf"])
  # Default teacher (the recorded source) vs that source named explicitly: the same KD.
  kd = {}
  for name, teachers in (("recorded", ""), ("named", world["hf"])):
    run(_continue_config(world, pruned, teachers=teachers), str(tmp_path / name))
    kd[name] = [r["distill/kd"] for r in read_metrics(str(tmp_path / name))
                if "distill/kd" in r][0]
  assert kd["recorded"] > 1e-3  # not the student distilling from itself (KD 0)
  assert kd["recorded"] == pytest.approx(kd["named"], rel=1e-5)


def test_continue_refuses_when_the_recorded_source_is_gone(world, tmp_path):
  src = str(tmp_path / "src")
  shutil.copytree(world["hf"], src)
  cfg = _learned_config(dict(world, hf=src), steps=2)
  cfg.prune.method = "random"
  reset_unread_blocks(cfg)  # the tiny world's learned knobs
  cfg.final_eval = False
  run(cfg, str(tmp_path / "prune"))
  shutil.rmtree(src)
  cfg = _continue_config(world, str(tmp_path / "prune" / "pruned"))
  with pytest.raises(JShearError, match=r"is gone: set config.model.source"):
    run(cfg, str(tmp_path / "cont"))
  assert not os.path.exists(tmp_path / "cont")


def test_each_stage_draws_its_own_data_stream(world):
  from jshear.data.mixture import MixtureLoader, domain_sources
  from jshear.train.loop import stage_seed
  cfg = tiny_world.config(world)
  sources = domain_sources(world["data"], "train")
  w = {d: 1 / len(sources) for d in sources}
  first = {s: MixtureLoader(sources, w, 8, seed=stage_seed(cfg, stages.get(s))).next_batch()["tokens"]
           for s in ("prune", "continue")}
  assert not np.array_equal(first["prune"], first["continue"])


def test_a_shared_stream_gives_methods_the_same_rows(world, tmp_path):
  """data.stream=shared: the continue stage picks the stream up where pruning stopped, so
  learned (2 pruning + 2 continued steps) and a one-shot method (4 continued steps) end on
  the same loader state: the same rows, in the same order."""
  from jshear.checkpoint import Checkpointer
  from jshear.train.loop import stage_seed
  states = {}
  for method, cont_steps in (("learned", 2), ("magnitude", 4)):
    cfg = _learned_config(world, steps=2)
    cfg.prune.method, cfg.data.stream, cfg.final_eval = method, "shared", False
    reset_unread_blocks(cfg)  # the tiny world's learned knobs
    cfg.stages = "prune,finalize,continue"
    cfg.prune.reweight_rule = cfg.continued.reweight_rule = "constant"
    k = cfg.continued
    k.steps, k.eval_every, k.ckpt_every, k.log_every = cont_steps, 0, cont_steps, cont_steps
    run(cfg, str(tmp_path / method))
    ck = Checkpointer(str(tmp_path / method / "continue" / "checkpoints"))
    states[method] = ck.read_extra()["loader"]
    ck.close()
  for st in states.values():
    st.pop("weight_history")
  assert states["learned"] == states["magnitude"]
  assert states["learned"]["step"] == 4 and states["learned"]["seed"] == stage_seed(cfg, stages.get("prune"))
  cfg.data.stream = "one"
  with pytest.raises(JShearError, match="data.stream='one' must be one of"):
    run(cfg, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")


def test_drop_checkpoints_keeps_what_later_stages_read(world, tmp_path):
  """drop_checkpoints=True: a finished run keeps no checkpoints, but a changed continue
  stage still picks the shared stream up where pruning stopped, and a finalize that needs
  the deleted pruning weights says so."""
  from jshear.checkpoint import Checkpointer
  from jshear.train.loop import stage_seed
  cfg = _learned_config(world, steps=2)
  cfg.data.stream, cfg.final_eval, cfg.drop_checkpoints = "shared", False, True
  cfg.stages = "prune,finalize,continue"
  cfg.prune.reweight_rule = cfg.continued.reweight_rule = "constant"
  k = cfg.continued
  k.steps, k.eval_every, k.ckpt_every, k.log_every = 2, 0, 2, 2
  w = tmp_path / "w"
  run(cfg, str(w))
  assert not (w / "prune" / "checkpoints").exists()
  assert not (w / "continue" / "checkpoints").exists()
  assert (w / "continued" / "model_config.json").exists()
  assert json.loads((w / "prune" / "stream_end.json").read_text())["step"] == 2
  # A new continue config: the stage runs again from WORKDIR/pruned on the rows after the
  # pruning stage's (its loader ends at step 4, not 2), keeping its checkpoints this time.
  cfg.overwrite, cfg.drop_checkpoints, k.lr = True, False, k.lr / 2
  run(cfg, str(w))
  ck = Checkpointer(str(w / "continue" / "checkpoints"))
  loader = ck.read_extra()["loader"]
  ck.close()
  assert loader["step"] == 4 and loader["seed"] == stage_seed(cfg, stages.get("prune"))
  (w / "finalize" / "DONE").unlink()
  with pytest.raises(JShearError, match="holds no checkpoint"):
    run(cfg, str(w))


def test_a_new_method_in_a_finished_workdir_chooses_new_masks(world, tmp_path):
  cfg = _learned_config(world, steps=2)
  cfg.prune.method, cfg.final_eval = "magnitude", False
  reset_unread_blocks(cfg)  # the tiny world's learned knobs
  workdir = str(tmp_path / "w")
  run(cfg, workdir)
  old = np.load(os.path.join(workdir, "masks", "binary_masks.npz"))["intermediate"]
  cfg.prune.method, cfg.overwrite = "random", True
  reset_unread_blocks(cfg)  # the tiny world's learned knobs
  run(cfg, workdir)
  new = np.load(os.path.join(workdir, "masks", "binary_masks.npz"))["intermediate"]
  assert not np.array_equal(old, new)
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["prune"]["method"] == "random"


def test_swap_evaluates_both_masks_on_both_weights(world, learned, tmp_path):
  from jshear.experiments.swap import swap
  cfg = _learned_config(world, steps=2)
  cfg.prune.method, cfg.final_eval = "random", False
  reset_unread_blocks(cfg)  # the tiny world's learned knobs
  run(cfg, str(tmp_path / "oneshot"))
  workdir, _ = learned
  res = swap(_learned_config(world), workdir, str(tmp_path / "oneshot"), rows=4)
  assert len(res) == 4 and all(v["se"] > 0 for v in res.values())
  # Other masks, other weights: the four cells differ; random masks lose on both weights.
  assert len({round(v["mean"], 6) for v in res.values()}) == 4
  for w in ("source weights", "pruning-stage weights"):
    assert res[f"learned masks / {w}"]["mean"] < res[f"one-shot masks / {w}"]["mean"]
