"""The grow stage through the pipeline: pretrain -> grow -> pretrain -> export on the tiny
world. Which source layer each grown layer holds (stack, interleave), that zero growth keeps
the logits on both families, that the second pretrain starts from the grown weights with a
fresh optimizer and schedule on the continued data stream, exact resume after kill -9 in
the second pretrain, the planner's grown shape, the HF export, and refusals."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import torch
import transformers

import hf_tiny
import tiny_world
from jshear import model_io
from jshear import sharding as shd
from jshear.data.mixture import MixtureLoader, domain_sources
from jshear.errors import JShearError
from jshear.metrics import read_metrics
from jshear.model.transformer import forward
from jshear.optim import schedule_fn
from jshear.train import loop, plan, stages
from jshear.train.pipeline import run, with_stage_blocks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return tiny_world.build(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def grown_run(world, tmp_path_factory):
  """The whole run, uninterrupted, with every batch drawn and the steps built recorded."""
  batches, built, first_state = [], {}, {}
  real_next, real_step = loop.MixtureLoader.next_batch, loop.stage_step

  def next_batch(self):
    out = real_next(self)
    batches.append(np.array(out["tokens"]))
    return out

  def stage_step(ctx, stage, *args, **kwargs):
    built[stage.name] = plan_ = real_step(ctx, stage, *args, **kwargs)
    jitted = plan_.step

    def step(state, *rest):  # the state the stage's first step gets (before donation)
      first_state.setdefault(stage.name, jax.device_get(state))
      return jitted(state, *rest)
    step.lower = jitted.lower
    plan_.step = step
    return plan_

  workdir = str(tmp_path_factory.mktemp("grown"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(loop.MixtureLoader, "next_batch", next_batch)
    mp.setattr(loop, "stage_step", stage_step)
    summary = run(tiny_world.grow_config(world), workdir)
  return dict(workdir=workdir, summary=summary, batches=batches, built=built,
              first_state=first_state)


def _layers(path):
  return model_io.load_model(path)


def _same_layer(a, k, b, i):
  return all(np.array_equal(a["layers"][n][k], b["layers"][n][i]) for n in a["layers"])


def test_stack_layer_k_holds_source_layer_k_mod_n(grown_run):
  w = grown_run["workdir"]
  assert grown_run["summary"]["stages"] == ["pretrain", "grow", "pretrain_2", "export"]
  scfg, src = _layers(os.path.join(w, "pretrained"))
  gcfg, grown = _layers(os.path.join(w, "grown"))
  n = scfg.num_layers
  assert (n, gcfg.num_layers) == (2, 4)
  for k in range(gcfg.num_layers):
    assert _same_layer(grown, k, src, k % n), k
    assert not _same_layer(grown, k, src, (k + 1) % n), k
  for key in src:
    if key != "layers":
      np.testing.assert_array_equal(grown[key], src[key])


def test_second_pretrain_starts_from_the_grown_weights_with_a_fresh_optimizer(grown_run, world):
  w, state = grown_run["workdir"], grown_run["first_state"]["pretrain_2"]
  _, grown = _layers(os.path.join(w, "grown"))
  for a, b in zip(jax.tree.leaves(grown), jax.tree.leaves(state["params"])):
    np.testing.assert_array_equal(a, b)
  assert int(state["step"]) == 0
  moments = [x for x in jax.tree.leaves(state["opt_state"]) if np.size(x) > 1]
  assert moments and all(not np.any(x) for x in moments)   # no moments carried over
  # ... and a fresh schedule: warm-up from zero over pretrain_2's own steps
  cfg = with_stage_blocks(tiny_world.grow_config(world))
  lr = schedule_fn(cfg.pretrain_2, cfg.pretrain_2.steps)
  recs = [r for r in read_metrics(w) if r["stage"] == "pretrain_2" and "lm_loss" in r]
  assert [r["step"] for r in recs] == list(range(1, 13))
  assert [r["lr"] for r in recs] == pytest.approx([float(lr(s)) for s in range(12)])
  assert recs[0]["lr"] == 0.0 and cfg.pretrain_2.batch_size == 8   # from `pretrain`


def test_second_pretrain_continues_the_data_stream(grown_run, world):
  cfg = tiny_world.grow_config(world)
  sources = domain_sources(world["data"], "train")
  first = stages.get("pretrain")
  ref = MixtureLoader(sources, {d: 1 / len(sources) for d in sources}, 8,
                      seed=loop.stage_seed(cfg, first))
  want = [ref.next_batch()["tokens"] for _ in range(4 + 12)]
  got = grown_run["batches"]
  assert len(got) == 16
  for i, (a, b) in enumerate(zip(want, got)):   # rows 4.. are pretrain's next ones
    np.testing.assert_array_equal(a, b, err_msg=f"batch {i}")


def test_the_grown_run_exports_and_reloads_in_transformers(grown_run):
  w = grown_run["workdir"]
  hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(w, "hf"))
  assert hf.config.num_hidden_layers == 4
  mcfg, params = _layers(os.path.join(w, "pretrained_2"))
  tokens = np.arange(24, dtype=np.int32).reshape(2, 12) % 250
  want = np.asarray(forward(params, tokens, cfg=mcfg))
  with torch.no_grad():
    got = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_the_planner_plans_the_grown_shape_and_the_loops_program(grown_run, world):
  cfg = tiny_world.grow_config(world)
  mesh = shd.make_mesh(dict(cfg.mesh.ici), dict(cfg.mesh.dcn))
  assert plan.plannable(cfg) == ("pretrain", "prune", "continue", "pretrain_2")
  for name, layers in (("pretrain", 2), ("pretrain_2", 4)):
    built, block, mcfg = plan.stage_plan(cfg, name, plan.source_config(cfg, name), mesh)
    assert mcfg.num_layers == layers and block.steps == (4 if layers == 2 else 12)
    with jax.set_mesh(mesh):
      want = grown_run["built"][name].lower(8, tiny_world.SEQ).as_text()
      assert built.lower(8, tiny_world.SEQ).as_text() == want, name


# ---- kill -9 in the second pretrain ---------------------------------------------------

def _cmd(cfg_path, workdir):
  return [sys.executable, "-m", "jshear.train", f"--config={cfg_path}", f"--workdir={workdir}"]


def _losses(workdir, stage):
  out = {}
  for r in read_metrics(workdir):
    if r["stage"] == stage and "lm_loss" in r:
      out[r["step"]] = r["loss"]   # a re-run step overwrites: the resumed value counts
  return out


def test_kill_9_in_the_second_pretrain_then_rerun_is_bitwise_the_straight_run(
    grown_run, world, tmp_path):
  # The straight run's finished pretrain and grow seed the workdir (the rerun skips them,
  # as after a kill later on), so the killed process spends its time in pretrain_2.
  ref, wd = grown_run["workdir"], str(tmp_path / "killed")
  os.makedirs(wd)
  for d in ("pretrain", "pretrained", "grow", "grown"):
    shutil.copytree(os.path.join(ref, d), os.path.join(wd, d))
  shutil.copy(os.path.join(ref, "config.json"), wd)
  cfg_path = tiny_world.write_grow_config(world, tmp_path / "cfg.py")
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.Popen(_cmd(cfg_path, wd), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and max(_losses(wd, "pretrain_2"), default=0) < 7:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(_losses(wd, "pretrain_2"))
  assert 7 <= killed_at < 12, killed_at   # after the step-3 checkpoint landed
  assert not os.path.exists(os.path.join(wd, "pretrain_2", "DONE"))
  r = subprocess.run(_cmd(cfg_path, wd), cwd=REPO, env=env, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "already done; skipping" in r.stderr and "pretrain_2: resumed at step" in r.stderr
  assert _losses(wd, "pretrain_2") == _losses(ref, "pretrain_2")
  for a, b in zip(jax.tree.leaves(_layers(os.path.join(ref, "pretrained_2"))[1]),
                  jax.tree.leaves(_layers(os.path.join(wd, "pretrained_2"))[1])):
    np.testing.assert_array_equal(a, b)
  assert os.path.exists(os.path.join(wd, "hf", "config.json"))


# ---- grow alone, from a model dir -----------------------------------------------------

def _grow_only(world, source, **grow):
  cfg = tiny_world.config(world)
  cfg.stages, cfg.final_eval = "grow", False
  cfg.grow.update(source=source, **grow)
  return cfg


def test_interleave_layer_k_holds_source_layer_k_div_g(grown_run, world, tmp_path):
  src_dir = os.path.join(grown_run["workdir"], "pretrained")
  run(_grow_only(world, src_dir, factor=3, operator="interleave"), str(tmp_path / "w"))
  _, src = _layers(src_dir)
  gcfg, grown = _layers(str(tmp_path / "w" / "grown"))
  assert gcfg.num_layers == 6
  for k in range(6):
    assert _same_layer(grown, k, src, k // 3), k
    assert not _same_layer(grown, k, src, 1 - k // 3), k


@pytest.fixture(scope="module")
def parallel_hf(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("cohere"))
  hf_tiny.build(hf_tiny.cohere_config(kv=2, vocab=256, hidden=32, heads=4, layers=2,
                                      inter=48)).save_pretrained(path)
  return path


@pytest.mark.parametrize("family", ["llama", "parallel"])
def test_zero_growth_keeps_the_logits_and_exports(world, parallel_hf, tmp_path, family):
  src_dir = world["hf"] if family == "llama" else parallel_hf
  cfg = _grow_only(world, src_dir, target_layers=6 if family == "parallel" else 8,
                   operator="zero")
  cfg.stages = "grow,export"
  run(cfg, str(tmp_path / "w"))
  from jshear.convert.hf_import import read_model
  scfg, src = read_model(src_dir)
  gcfg, grown = _layers(str(tmp_path / "w" / "grown"))
  assert gcfg.family == family and gcfg.num_layers == (8 if family == "llama" else 6)
  tokens = np.arange(20, dtype=np.int32).reshape(2, 10) * 7 % 250
  want = np.asarray(forward(src, tokens, cfg=scfg))
  np.testing.assert_allclose(forward(grown, tokens, cfg=gcfg), want, atol=1e-5, rtol=0)
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "w" / "hf"))
  assert hf.config.num_hidden_layers == gcfg.num_layers
  with torch.no_grad():
    got = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


# ---- refusals ---------------------------------------------------------------------------

def test_a_target_depth_the_factor_does_not_divide_is_refused_and_nothing_written(
    world, tmp_path, capsys):
  from jshear.cli import run_in_workdir   # what `python -m jshear.train` runs
  cfg = _grow_only(world, world["hf"], target_layers=6)   # a 4-layer source
  w = str(tmp_path / "w")
  with pytest.raises(SystemExit) as exit_:
    run_in_workdir(run, cfg, w)
  err = capsys.readouterr().err.strip().splitlines()
  assert exit_.value.code == 2 and len(err) == 1, err
  assert err[0].startswith("error: grow.target_layers=6 is not a multiple"), err
  assert not os.path.exists(w)


@pytest.mark.parametrize("change,pattern", [
    (lambda c: c.grow.update(factor=1), r"grow\.factor must be an integer >= 2"),
    (lambda c: c.grow.update(factor=2, target_layers=8), "both set"),
    (lambda c: c.grow.update(operator="copy"), r"config\.grow\.operator='copy' must be one of"),
    (lambda c: c.update(stages="grow,export,export"), "more than once; only"),
    (lambda c: c.pretrain_2.update(lr=-1.0), r"config\.pretrain_2\.lr=-1\.0 must be >= 0"),
])
def test_bad_growth_config_is_refused_before_anything_is_written(world, tmp_path, change,
                                                                 pattern):
  cfg = tiny_world.grow_config(world)
  change(cfg)
  with pytest.raises(JShearError, match=pattern):
    run(cfg, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "config.json")


def test_done_keys_a_later_listing_changes_only_itself(world, grown_run, tmp_path):
  """A new pretrain_2 block reruns pretrain_2 alone; a new grow block, grow and after."""
  from jshear.train.pipeline import _stage_key
  base = with_stage_blocks(tiny_world.grow_config(world))
  keys = lambda c: [_stage_key(c, s, stages.occurrences(c.stages.split(","), c))
                    for s in stages.occurrences(c.stages.split(","), c)]
  k0 = keys(base)
  assert len(set(k0)) == 4
  other = with_stage_blocks(tiny_world.grow_config(world))
  other.pretrain_2.lr = 5e-4
  k1 = keys(other)
  assert k1[:2] == k0[:2] and k1[2] != k0[2]
  other = with_stage_blocks(tiny_world.grow_config(world))
  other.grow.operator = "interleave"
  k2 = keys(other)
  assert k2[0] == k0[0] and all(a != b for a, b in zip(k2[1:], k0[1:]))
  with open(os.path.join(grown_run["workdir"], "pretrain_2", "DONE")) as f:
    assert json.load(f)["config"] == k0[2]
