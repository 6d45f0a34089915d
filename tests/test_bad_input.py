"""Bad input is refused before anything is written, with one line naming the problem and
exit code 2; a run that trained nothing or evaluates to NaN fails instead of finishing."""

import glob
import importlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import tiny_world
from jshear import config_check
from jshear.config_base import base_config
from jshear.errors import JShearError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN_TENSOR = "model.layers.1.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return tiny_world.build(tmp_path_factory.mktemp("world"))


def _with_nan(src, dst, name=NAN_TENSOR, n=1):
  """A copy of HF dir `src` with `n` NaNs in tensor `name`."""
  shutil.copytree(src, dst)
  path = os.path.join(dst, "model.safetensors")
  tensors = load_file(path)
  tensors[name] = tensors[name].copy()
  tensors[name].reshape(-1)[:n] = np.nan
  save_file(tensors, path, metadata={"format": "pt"})
  return str(dst), tensors[name].size


# ---- config_check ------------------------------------------------------------------------

def _errors(**changes):
  cfg = base_config()
  for path, value in changes.items():
    *parents, key = path.split("__")
    node = cfg
    for p in parents:
      node = node[p]
    node[key] = value
  return config_check.problems(cfg)


def test_every_shipped_config_and_the_defaults_pass():
  assert config_check.problems(base_config()) == []
  assert config_check.problems(tiny_world.config({"hf": "", "data": ""})) == []
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
    name = os.path.basename(path)[:-3]
    if name != "__init__":
      cfg = importlib.import_module(f"configs.{name}").get_config()
      assert config_check.problems(cfg) == [], name


def test_every_checked_key_exists_in_the_defaults():
  """A key renamed or moved out of reach would otherwise be skipped silently."""
  cfg = base_config()
  assert [c.path for c in config_check.CHECKS if config_check.lookup(cfg, c.path) is None] == []


@pytest.mark.parametrize("changes, message", [
    (dict(continued__lr=-1.0),
     "config.continued.lr=-1.0 must be >= 0 (a negative learning rate trains by gradient ascent)"),
    (dict(prune__learned__mask_lr=0.0), "config.prune.learned.mask_lr=0.0 must be > 0"),
    (dict(prune__learned__lambda_lr=0.0),
     "config.prune.learned.lambda_lr=0.0 must be a finite number != 0"),
    (dict(pretrain__b2=1.0), "config.pretrain.b2=1.0 must be in [0, 1)"),
    (dict(prune__eps=0.0), "config.prune.eps=0.0 must be > 0"),
    (dict(continued__clip_norm=-1.0), "config.continued.clip_norm=-1.0 must be >= 0"),
    (dict(prune__final_lr_fraction=1.5), "config.prune.final_lr_fraction=1.5 must be in [0, 1]"),
    (dict(continued__ckpt_every=0), "config.continued.ckpt_every=0 must be an integer >= 1"),
    (dict(prune__lr=float("nan")), "config.prune.lr=nan must be >= 0"),
    (dict(continued__weight_decay=float("inf")), "config.continued.weight_decay=inf must be >= 0"),
    (dict(data__seq_len=1), "config.data.seq_len=1 must be an integer >= 2"),
    (dict(distill__temperature=0.0), "config.distill.temperature=0.0 must be > 0"),
    (dict(prune__learned__constraint="layer-mean"),
     "config.prune.learned.constraint='layer-mean' must be one of "
     "('layer_mean', 'per_layer', 'count')"),
    (dict(continued__reweight_rule="sheard"), "config.continued.reweight_rule='sheard' must be one of"),
    (dict(pretrain__schedule="cos"), "config.pretrain.schedule='cos' must be one of"),
    (dict(export__dtype="int8"), "config.export.dtype='int8' must be one of"),
    (dict(model__attention_impl="flash"), "config.model.attention_impl='flash' must be one of"),
    (dict(data__stream="one"), "config.data.stream='one' must be one of"),
    (dict(prune__learned__log_alpha_bounds=(1.0, -1.0)),
     "config.prune.learned.log_alpha_bounds=(1.0, -1.0) must be"),
    (dict(prune__layerchop__layout="gaps"), "config.prune.layerchop.layout='gaps' must be one of"),
    (dict(prune__dimchop__every=0), "config.prune.dimchop.every=0 must be an integer >= 1"),
    (dict(prune__calib__rows=0), "config.prune.calib.rows=0 must be an integer >= 1"),
])
def test_a_bad_value_is_named_with_its_rule(changes, message):
  errs = _errors(**changes)
  assert len(errs) == 1 and errs[0].startswith(message), errs


def test_lambda_lr_of_either_sign_and_zero_with_projection_pass():
  assert _errors(prune__learned__lambda_lr=1.0) == []  # jshear.optim ascends with either sign
  assert _errors(prune__learned__lambda_lr=0.0, prune__learned__size_control="projection") == []
  assert _errors(continued__lr=0.0) == []          # lr 0: only the masks train (documented)


def test_domain_weights_are_checked_as_a_mapping():
  cfg = base_config()
  cfg.continued.domain_weights = {"wiki": 1.0, "code": -0.5}
  (err,) = config_check.problems(cfg)
  assert err.startswith("config.continued.domain_weights={'code': -0.5, 'wiki': 1.0} must be")


def test_all_problems_in_one_line_and_check_raises():
  cfg = base_config()
  cfg.continued.lr, cfg.prune.b1 = -1.0, 1.0
  with pytest.raises(JShearError) as err:
    config_check.check(cfg)
  text = str(err.value)
  assert "\n" not in text and "config.continued.lr=-1.0" in text and "config.prune.b1=1.0" in text


def test_a_key_moved_into_a_sub_block_is_still_checked():
  cfg = base_config()
  cfg.prune.learned.mask_lr = -2.0  # a table path one level up still finds it
  assert config_check.lookup(cfg, "prune.mask_lr") == ("prune.learned.mask_lr", -2.0)
  assert config_check.problems(cfg) == ["config.prune.learned.mask_lr=-2.0 must be > 0 "
                                        "(at 0 the mask logits never move)"]


def test_allowed_values_have_one_definition():
  """The modules that check these values import them from config_check."""
  from jshear import optim
  from jshear.data import reweight
  from jshear.model import attention
  from jshear.model import config as model_config
  from jshear.prune import layerchop, mask_init, state
  from jshear.train import loop, step
  from jshear.train.stages import choosers
  assert reweight.RULES is config_check.REWEIGHT_RULES
  assert state.CONSTRAINTS is config_check.CONSTRAINTS
  assert mask_init.MASK_INITS is config_check.MASK_INITS
  assert layerchop.LAYOUTS is config_check.LAYERCHOP_LAYOUTS
  assert attention.IMPLS is config_check.ATTENTION_IMPLS
  assert optim.SCHEDULES is config_check.SCHEDULES
  assert step.SIZE_CONTROLS is config_check.SIZE_CONTROLS
  assert step.GATE_FORWARDS is config_check.GATE_FORWARDS
  assert loop.STREAMS is config_check.STREAMS
  assert choosers._WIDTH_METHODS is config_check.LAYERCHOP_WIDTHS
  assert model_config.REMAT_POLICIES is config_check.REMAT_POLICIES
  assert model_config.COMPUTE_DTYPES is config_check.COMPUTE_DTYPES
  # The choosers' table holds the implementations; its names must be the allowed ones.
  assert tuple(choosers.CHOOSERS) == config_check.PRUNE_METHODS


# ---- non-finite source weights -----------------------------------------------------------

def test_nan_hf_source_is_refused_by_name_and_import_hf_writes_nothing(world, tmp_path, capsys):
  from jshear.convert.__main__ import main
  from jshear.convert.hf_import import read_hf_params
  src, size = _with_nan(world["hf"], tmp_path / "nan_hf", n=3)
  want = f"{NAN_TENSOR}: 3 non-finite value(s) of {size} in {src}; the source is corrupt"
  with pytest.raises(JShearError) as err:
    read_hf_params(src)
  assert str(err.value) == want
  out = tmp_path / "ckpt"
  assert main(["import-hf", src, str(out)]) == 2
  assert want in capsys.readouterr().err
  assert not out.exists() and not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_nan_jshear_model_dir_is_refused_at_load(world, tmp_path):
  import jax
  from jshear import model_io
  from jshear.convert.hf_import import read_hf_params
  cfg, params = read_hf_params(world["hf"])
  params["layers"]["w_down"][2, 0, 0] = np.inf
  path = model_io.save_model(str(tmp_path / "m"), cfg, params)
  n = params["layers"]["w_down"].size
  msg = f"layers.w_down (layer 2): 1 non-finite value(s) of {n} in {path}"
  with pytest.raises(JShearError, match=msg.replace("(", r"\(").replace(")", r"\)")):
    model_io.load_model(path)
  # The sharded read checks each shard and counts over the whole tensor.
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  mesh = Mesh(np.array(jax.devices()), ("fsdp",))
  sh = jax.tree.map(lambda _: NamedSharding(mesh, P()), params)
  sh["layers"]["w_down"] = NamedSharding(mesh, P(None, "fsdp"))  # 8 shards of 12 rows
  with pytest.raises(JShearError, match=f"of {n} in"):
    model_io.load_model(path, shardings=sh)


# ---- the CLIs: one line, exit 2, nothing written ----------------------------------------

def _config_file(tmp_path, world, hf=None):
  return tiny_world.write_prune_config(world, tmp_path / "cfg.py", hf)


def _run(module, *args):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def _refused(r, message):
  """Exit 2, no traceback, exactly one `error:` line (the last) holding `message`."""
  assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
  assert "Traceback" not in r.stderr, r.stderr
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and r.stderr.strip().splitlines()[-1] == errors[0], r.stderr
  assert message in errors[0], errors[0]


def _nothing_written(workdir):
  assert not os.path.exists(os.path.join(workdir, "config.json"))
  if os.path.isdir(workdir):
    assert os.listdir(workdir) == []


def test_cli_refuses_a_nan_source_before_any_stage(world, tmp_path):
  src, size = _with_nan(world["hf"], tmp_path / "nan_hf")
  w = str(tmp_path / "w")
  r = _run("jshear.train", f"--config={_config_file(tmp_path, world, hf=src)}", f"--workdir={w}")
  _refused(r, f"error: {NAN_TENSOR}: 1 non-finite value(s) of {size} in {src}")
  _nothing_written(w)


def test_cli_refuses_a_negative_lr(world, tmp_path):
  w = str(tmp_path / "w")
  r = _run("jshear.train", f"--config={_config_file(tmp_path, world)}", f"--workdir={w}",
           "--config.prune.lr=-0.001")
  _refused(r, "error: config.prune.lr=-0.001 must be >= 0 (a negative learning rate trains "
              "by gradient ascent)")
  _nothing_written(w)


@pytest.mark.parametrize("module", ["jshear.train", "jshear.experiments.compare"])
def test_cli_refuses_a_workdir_that_is_a_file(world, tmp_path, module):
  w = tmp_path / "w"
  w.write_text("not a run")
  cfg = _config_file(tmp_path, world) if module == "jshear.train" else \
      os.path.join(REPO, "configs", "compare_demo.py")
  r = _run(module, f"--config={cfg}", f"--workdir={w}")
  _refused(r, f"error: --workdir={w}: exists and is not a directory")
  assert w.read_text() == "not a run"
  r = _run(module, f"--config={cfg}", f"--workdir={w / 'sub'}")
  _refused(r, f"cannot be made: {w} is not a directory")


@pytest.mark.parametrize("module", ["jshear.train", "jshear.experiments.compare"])
def test_cli_refuses_a_missing_config_file(tmp_path, module):
  missing, w = tmp_path / "nope.py", str(tmp_path / "w")
  r = _run(module, f"--config={missing}", f"--workdir={w}")
  _refused(r, f"error: --config: cannot load the config file: No such file or directory: "
              f"'{missing}'")
  r = _run(module, f"--config={missing}", f"--workdir={w}", "--config.seed=1")  # an override
  _refused(r, "No such file or directory")
  assert not os.path.exists(w)


def test_other_clis_exit_2_on_bad_input(world, tmp_path, capsys):
  from jshear.data.prepare import main as prepare_main
  from jshear.eval.__main__ import main as eval_main
  from jshear.eval.generate import main as generate_main
  assert eval_main(["tasks", "--model", world["hf"], "--tasks", "piqa,nosuchtask"]) == 2
  assert "unknown task 'nosuchtask'" in capsys.readouterr().err
  assert generate_main(["--model", str(tmp_path / "nope"), "--prompt", "hi"]) == 2
  assert "nope" in capsys.readouterr().err
  out = tmp_path / "prepared"
  assert prepare_main([f"--tokenizer={world['hf']}", f"--domain=web={tmp_path}/none_*.txt",
                       f"--out={out}", "--workers=0"]) == 2
  assert "domain 'web'" in capsys.readouterr().err and not out.exists()


# ---- a run that trained nothing, or evaluates to NaN, fails -----------------------------

def _continue_only(world, **block):
  cfg = tiny_world.config(world)
  cfg.stages, cfg.final_eval = "continue", False
  k = cfg.continued
  k.steps, k.warmup_steps, k.log_every, k.eval_every, k.ckpt_every = 3, 0, 3, 0, 3
  k.reweight_rule, k.max_bad_steps, k.clip_norm = "constant", 5, 0.0
  k.update(block)
  return cfg


def test_a_stage_that_skipped_every_step_fails_and_is_not_done(world, tmp_path, monkeypatch):
  from jshear.convert import hf_import
  from jshear.train.pipeline import run
  src, _ = _with_nan(world["hf"], tmp_path / "nan_hf")
  monkeypatch.setattr(hf_import, "check_finite", lambda x, *a, **k: x)  # let the NaN through
  cfg = _continue_only(world)
  cfg.model.source = src
  w = tmp_path / "w"
  with pytest.raises(JShearError, match=r"^stage continue: all 3 steps were skipped as "
                                        r"non-finite \(loss or gradient\); nothing was trained$"):
    run(cfg, str(w))
  assert (w / "continue" / "STARTED").exists() and not (w / "continue" / "DONE").exists()
  assert not (w / "summary.json").exists()


def test_a_final_eval_that_is_not_finite_fails_without_a_summary(world, tmp_path):
  from jshear.train.pipeline import run
  # lr 1e30 breaks the weights at the first update; steps 2 and 3 are skipped (fewer than
  # max_bad_steps), so only the final evaluation can tell.
  cfg = _continue_only(world, lr=1e30)
  cfg.final_eval = True
  w = tmp_path / "w"
  with pytest.raises(JShearError, match=r"^final evaluation: the final model's held-out loss "
                                        r"is not finite in \["):
    run(cfg, str(w))
  assert (w / "continue" / "DONE").exists() and not (w / "summary.json").exists()
