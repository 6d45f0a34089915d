"""The memory planner: every shipped config resolves a source shape without weights (no
silent SmolLM2 fallback), a missing shape is refused naming the flag and the config keys,
and the plain README command compiles a small config end to end."""

import glob
import json
import os
import subprocess
import sys

import pytest

from jshear.train import plan
from jshear.errors import JShearError
from jshear.prune.targets import target_config
from jshear.train.pipeline import prune_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                 if not p.endswith("__init__.py"))


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "jshear.train.plan", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_resolves_its_source_shape(path, monkeypatch):
  monkeypatch.chdir(REPO)                       # configs import `configs.*`
  cfg = plan.load_config(path)
  stage = plan.default_stage(cfg)
  mcfg = plan.source_config(cfg, stage)
  stages = cfg.stages.split(",")
  if "prune" in stages:                         # the target fits the source it plans with
    spec = prune_spec(cfg, mcfg)
    assert target_config(mcfg, spec.target).num_layers == cfg.prune.target.num_layers
  elif stage == "pretrain":
    assert mcfg.num_layers == cfg.model.num_layers
  else:  # continued pretraining of a source model (data_tools_demo): the source's shape
    assert stage == "continue" and cfg.model.source and mcfg.num_layers >= 1


def test_sheared_configs_declare_a_llama2_7b_source():
  for name in ("sheared_2p7b", "sheared_1p3b"):
    cfg = plan.load_config(os.path.join(REPO, "configs", f"{name}.py"))
    assert cfg.model.source == "" and cfg.model.source_shape == "llama2-7b"
    assert plan.source_config(cfg, "prune").num_layers == 32


def test_missing_source_shape_names_the_flag_and_keys():
  cfg = plan.load_config(os.path.join(REPO, "configs", "sheared_2p7b.py"),
                         ["model.source_shape=''"])
  with pytest.raises(JShearError) as e:
    plan.source_config(cfg, "prune")
  for words in ("--source_shape", "model.source", "model.source_shape", "llama2-7b"):
    assert words in str(e.value)
  with pytest.raises(JShearError, match="model.source_shape='llama9'.*known:.*llama2-7b"):
    plan.source_config(plan.load_config(os.path.join(REPO, "configs", "sheared_2p7b.py"),
                                        ["model.source_shape=llama9"]), "prune")
  with pytest.raises(JShearError, match="model.source='/nowhere'.*--source_shape"):
    plan.source_config(plan.load_config(os.path.join(REPO, "configs", "sheared_2p7b.py"),
                                        ["model.source='/nowhere'"]), "prune")
  # the flag wins over the config
  assert plan.source_config(cfg, "prune", "llama3-8b").vocab_size == 128256


@pytest.mark.parametrize("override", [("--config.model.source_shape=''",),
                                      ("--set", "model.source_shape=''")],
                         ids=["config-flag", "set-alias"])
def test_cli_refuses_a_missing_source_shape(override):
  """--config.KEY=VALUE, as jshear.train takes it, and its --set alias."""
  r = _run("--config=configs/sheared_2p7b.py", "--devices=8", *override)
  assert r.returncode == 2 and "--source_shape" in r.stderr and "model.source" in r.stderr
  assert "Traceback" not in r.stderr and "num_layers=30" not in r.stderr   # no SmolLM2 guess


def test_cli_plans_the_demo_config():
  """The README's plain command on a small config: a full ahead-of-time compile."""
  r = _run("--config=configs/demo.py", "--devices=4")
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["stage"] == "prune" and out["model"]["layers"] == 30 and out["devices"] == 4
  assert out["per_device_gib"]["total"] > 0
  r = _run("--config=configs/demo.py", "--devices=8")    # 4 rows cannot split over 8
  assert r.returncode == 2 and "prune.batch_size / prune.grad_accum" in r.stderr


def test_a_lora_continue_stage_plans_with_sharded_adapters_and_small_optimizer_state():
  """The planner compiles the LoRA step (stage_step, as the loop does): its optimizer state
  is the adapters' moments only, and the adapters shard by the weights' logical axes."""
  import tiny_world
  from jshear import sharding as shd
  from jshear.model.config import ModelConfig
  cfg = tiny_world.config({"hf": "", "data": ""})
  cfg.stages = "continue"
  mcfg = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=16)
  mesh = shd.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
  full = plan.plan(cfg, "continue", mcfg, mesh, 80.0)
  cfg.continued.lora.rank = 4
  out = plan.plan(cfg, "continue", mcfg, mesh, 80.0)
  gib = out["per_device_gib"]
  assert out["lora_rank"] == 4 and full["lora_rank"] == 0
  # Per device: every adapter half shards on fsdp (B [L, r, H, Dh] on Dh), so the moments
  # are ~8% of full's here (20% when B of q/k/v/gate/up sat whole on every device).
  assert 0 < gib["optimizer"] < 0.1 * full["per_device_gib"]["optimizer"]
  assert gib["adapters"] > 0 and gib["params"] == full["per_device_gib"]["params"]
  assert abs(gib["total"] - sum(v for k, v in gib.items() if k != "total")) < 1e-9
  built, _, _ = plan.stage_plan(cfg, "continue", mcfg, mesh)
  a_q, b_q = (built.shardings["lora"]["q"][k].spec for k in ("a", "b"))
  assert tuple(a_q) == (None, "fsdp", None)            # layers, embed -> fsdp, rank
  assert tuple(b_q) == (None, None, None, "fsdp")     # layers, rank, heads (tensor: 1), Dh
  assert [g.name for g in built.groups] == ["adapters"]


def test_the_blockwise_stage_plans_its_vmapped_block_step():
  """--stage=blockwise (listed): the block step train_blocks compiles, at the pruned
  shape; each device holds the states of its ceil(blocks / devices) slots."""
  import numpy as np
  import tiny_world
  from jshear import sharding as shd
  from jshear.model.config import ModelConfig
  from jshear.model.params import param_shapes
  cfg = tiny_world.config({"hf": "", "data": ""})
  assert "blockwise" not in plan.plannable(cfg)
  cfg.stages = "prune,finalize,blockwise,continue"
  assert "blockwise" in plan.plannable(cfg)
  mcfg = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_layers=5,
                     num_heads=4, num_kv_heads=2, head_dim=16)
  out = plan.plan(cfg, "blockwise", mcfg, shd.make_mesh({"data": 8}), 80.0)
  t = cfg.prune.target
  pruned = mcfg.replace(num_layers=t.num_layers, num_heads=t.num_heads,
                        num_kv_heads=t.num_kv_heads, hidden_size=t.hidden_size,
                        intermediate_size=t.intermediate_size)
  per_layer = sum(int(np.prod(s[1:])) for s in param_shapes(pruned)["layers"].values()) * 4
  slots = -(-t.num_layers // 8)
  assert out["per_device_gib"]["params"] * 1024 ** 3 == slots * per_layer
  assert out["blocks_per_device"] == [1] * t.num_layers + [0] * (8 - t.num_layers)
  assert out["padded_slots"] == 8 - t.num_layers and out["per_device_gib"]["total"] > 0
