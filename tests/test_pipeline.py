"""End to end on a tiny real world: prune -> finalize -> continue -> export, outputs a user
would look at, exact resume after kill -9, and config errors before any compile."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import transformers

import tiny_world
from jshear.config_base import reset_unread_blocks
from jshear.errors import JShearError
from jshear.metrics import read_metrics
from jshear.train.pipeline import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return tiny_world.build(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  summary = run(tiny_world.config(world), workdir)
  return workdir, summary


def test_pipeline_outputs(finished):
  workdir, summary = finished
  for stage in ("prune", "finalize", "continue", "export"):
    assert os.path.exists(os.path.join(workdir, stage, "DONE")), stage
  hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(workdir, "hf"))
  c = hf.config
  assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.hidden_size,
          c.intermediate_size) == (3, 2, 1, 32, 48)
  assert sum(p.numel() for p in hf.parameters()) == summary["final_params"]
  tok = transformers.AutoTokenizer.from_pretrained(os.path.join(workdir, "hf"))
  ids = tok("the license", return_tensors="pt").input_ids
  out = hf.generate(ids, max_new_tokens=5, do_sample=False)
  assert out.shape[1] == ids.shape[1] + 5

  masks = np.load(os.path.join(workdir, "masks", "binary_masks.npz"))
  assert int(masks["layer"].sum()) == 3 and int(masks["hidden"].sum()) == 32
  assert set(np.unique(masks["kv"].sum(axis=1))) == {1}
  recs = read_metrics(workdir)
  prune = [r for r in recs if r["stage"] == "prune" and "lm_loss" in r]
  assert [r["step"] for r in prune] == list(range(1, 7))
  for key in ("lagrangian", "prune/hidden/expected_size", "prune/hidden/target_size",
              "prune/layer/lambda1", "tokens_per_s", "data/weight/code"):
    assert key in prune[-1], key
  weights = [r for r in recs if r["stage"] == "continue" and "data/weight/code" in r]
  assert all(abs(sum(r[f"data/weight/{d}"] for d in ("code", "legal", "misc")) - 1) < 1e-6
             for r in weights)
  assert set(summary["eval"]) == {"source", "final"}
  assert os.path.isdir(os.path.join(workdir, "tensorboard"))
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["prune"]["target"]["hidden_size"] == 32


def test_rerun_is_a_no_op_and_other_config_is_refused(world, finished):
  workdir, summary = finished
  again = run(tiny_world.config(world), workdir)
  assert again["final_params"] == summary["final_params"]
  other = tiny_world.config(world)
  other.prune.lr = 5e-4
  with pytest.raises(JShearError, match=r"holds a different run .*'prune'"):
    run(other, workdir)


@pytest.mark.parametrize("change,pattern", [
    (lambda c: c.prune.target.update(num_layers=9), "exceeds the source"),
    (lambda c: c.prune.target.update(num_heads=3, num_kv_heads=2), "divisible"),
    (lambda c: c.update(stages="prune,polish"), "unknown stage"),
    (lambda c: c.prune.update(groups="layer,heads"), "unknown mask group 'heads'"),
    (lambda c: c.mesh.ici.update(data=3, fsdp=-1), "devices do not divide"),
    (lambda c: c.prune.update(batch_size=6), "divisible by data x fsdp = 8"),
])
def test_bad_config_fails_before_compile(world, tmp_path, change, pattern):
  cfg = tiny_world.config(world)
  change(cfg)
  t = time.time()
  with pytest.raises(JShearError, match=pattern):
    run(cfg, str(tmp_path / "w"))
  assert time.time() - t < 20


_CONFIG_FILE = """
import os, sys
sys.path.insert(0, {tests!r})
import tiny_world
def get_config():
  c = tiny_world.config({{"hf": {hf!r}, "data": {data!r}}})
  c.stages = "prune"
  c.prune.steps, c.prune.ckpt_every, c.prune.eval_every = 12, 2, 4
  return c
"""


def _train_cmd(cfg_path, workdir):
  return [sys.executable, "-m", "jshear.train", f"--config={cfg_path}", f"--workdir={workdir}"]


def _losses(workdir):
  out = {}
  for r in read_metrics(workdir):
    if "lm_loss" in r:
      out[r["step"]] = r["loss"]  # a re-run step overwrites: the resumed value counts
  return out


def test_kill_9_then_rerun_gives_bitwise_identical_losses(world, tmp_path):
  cfg_path = tmp_path / "cfg.py"
  cfg_path.write_text(_CONFIG_FILE.format(tests=os.path.join(REPO, "tests"), hf=world["hf"],
                                          data=world["data"]))
  env = dict(os.environ, PYTHONPATH=REPO)
  ref_dir, kill_dir = str(tmp_path / "ref"), str(tmp_path / "killed")
  subprocess.run(_train_cmd(cfg_path, ref_dir), cwd=REPO, env=env, check=True,
                 capture_output=True)
  proc = subprocess.Popen(_train_cmd(cfg_path, kill_dir), cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and max(_losses(kill_dir), default=0) < 7:
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(_losses(kill_dir))
  assert 7 <= killed_at < 12, killed_at
  subprocess.run(_train_cmd(cfg_path, kill_dir), cwd=REPO, env=env, check=True,
                 capture_output=True)
  ref, resumed = _losses(ref_dir), _losses(kill_dir)
  assert sorted(ref) == list(range(1, 13)) and sorted(resumed) == sorted(ref)
  assert all(ref[s] == resumed[s] for s in ref), (ref, resumed)


def test_cli_reports_unknown_config_key(world, tmp_path):
  cfg_path = tmp_path / "cfg.py"
  cfg_path.write_text(_CONFIG_FILE.format(tests=os.path.join(REPO, "tests"), hf=world["hf"],
                                          data=world["data"]))
  r = subprocess.run(_train_cmd(cfg_path, str(tmp_path / "w")) + ["--config.prune.stepz=3"],
                     cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                     text=True)
  assert r.returncode != 0 and "stepz" in r.stderr


@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_one_shot_methods_reach_the_target_and_export(world, tmp_path, method):
  cfg = tiny_world.config(world)
  cfg.stages, cfg.prune.method, cfg.final_eval = "prune,finalize,export", method, False
  reset_unread_blocks(cfg)  # the tiny world's learned knobs
  summary = run(cfg, str(tmp_path / method))
  hf = transformers.AutoModelForCausalLM.from_pretrained(summary["hf_dir"])
  c = hf.config
  assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.hidden_size,
          c.intermediate_size) == (3, 2, 1, 32, 48)
  assert not os.path.exists(tmp_path / method / "prune" / "checkpoints")


def test_pretrain_parallel_family_from_scratch(world, tmp_path):
  from configs import chop_300m
  cfg = chop_300m.get_config(layers=2, d=32, heads=4, inter=48, steps=8)
  cfg.model.vocab_size, cfg.model.tokenizer = 256, world["hf"]
  cfg.model.compute_dtype, cfg.model.remat = "float32", "full"
  cfg.data.path, cfg.data.seq_len = world["data"], tiny_world.SEQ
  cfg.mesh.ici.update(data=2, fsdp=4, tensor=1)
  t = cfg.pretrain
  t.batch_size, t.lr, t.warmup_steps, t.log_every, t.eval_every, t.ckpt_every = 8, 3e-3, 1, 1, 4, 4
  summary = run(cfg, str(tmp_path / "pt"))
  losses = [r["lm_loss"] for r in read_metrics(str(tmp_path / "pt")) if "lm_loss" in r]
  assert len(losses) == 8 and losses[-1] < losses[0] - 0.3
  hf = transformers.AutoModelForCausalLM.from_pretrained(summary["hf_dir"])
  assert type(hf).__name__ == "CohereForCausalLM" and hf.config.use_qk_norm


def _listing(root):
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      p = os.path.join(d, f)
      out[os.path.relpath(p, root)] = os.stat(p).st_mtime_ns
  return out


def test_refused_run_writes_nothing_and_the_corrected_command_runs_there(world, finished,
                                                                          tmp_path):
  cfg_path = tmp_path / "cfg.py"
  cfg_path.write_text(_CONFIG_FILE.format(tests=os.path.join(REPO, "tests"), hf=world["hf"],
                                          data=world["data"]).replace("12, 2, 4", "2, 2, 2"))
  env = dict(os.environ, PYTHONPATH=REPO)
  w = str(tmp_path / "w")
  for bad in ("--config.prune.target.num_layers=99", "--config.prune.batch_size=6",
              "--config.prune.stepz=3"):
    r = subprocess.run(_train_cmd(cfg_path, w) + [bad], cwd=REPO, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and not os.path.exists(w), (bad, r.stderr)
  r = subprocess.run(_train_cmd(cfg_path, w), cwd=REPO, env=env, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  assert os.path.exists(os.path.join(w, "prune", "DONE"))
  # A finished workdir: a refused command changes nothing in it.
  workdir, _ = finished
  before = _listing(workdir)
  cfg = tiny_world.config(world)
  cfg.prune.target.update(num_layers=99)
  with pytest.raises(JShearError, match="exceeds the source"):
    run(cfg, workdir)
  assert _listing(workdir) == before


def test_a_failed_start_does_not_block_the_next_attempt(world, tmp_path):
  w = tmp_path / "w"
  w.mkdir()
  other = tiny_world.config(world)
  other.prune.lr = 7e-4
  (w / "config.json").write_text(other.to_json_best_effort())  # a start that died early
  cfg = tiny_world.config(world)
  cfg.stages, cfg.prune.method, cfg.final_eval = "prune", "magnitude", False
  reset_unread_blocks(cfg)  # the tiny world's learned knobs
  run(cfg, str(w))
  assert json.loads((w / "config.json").read_text())["prune"]["lr"] == cfg.prune.lr


def test_non_finite_steps_abort_within_one_log_interval(world, tmp_path):
  cfg = tiny_world.config(world)
  cfg.stages, cfg.final_eval = "continue", False
  k = cfg.continued
  k.steps, k.lr, k.warmup_steps, k.log_every, k.eval_every, k.ckpt_every = 40, 1e30, 0, 5, 0, 40
  k.reweight_rule, k.max_bad_steps, k.clip_norm = "constant", 3, 0.0
  with pytest.raises(JShearError, match=r"non-finite steps in a row") as err:
    run(cfg, str(tmp_path / "w"))
  # lr 1e30 breaks the weights at the first update, so steps 2, 3, 4 are the first 3 bad
  # ones; the abort comes at the log step that ends that interval (5), not per step.
  streak, step = map(int, re.search(r"(\d+) non-finite steps in a row by step (\d+)",
                                    str(err.value)).groups())
  assert streak >= 3 and step == 5
