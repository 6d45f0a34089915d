"""Learned gates only where something can be removed, and refusals for combinations that
would misbehave silently: each a one-line error, exit 2, nothing written."""

import os
import subprocess
import sys

import jax
import pytest

import tiny_world
from jshear.prune.state import init_prune_state
from jshear.train import plan
from jshear.train.stages.choosers import prune_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIG_FILE = """
import sys
sys.path.insert(0, {tests!r})
import tiny_world
def get_config():
  c = tiny_world.config({{"hf": {hf!r}, "data": {data!r}}})
  c.stages = "prune"
  c.prune.steps, c.prune.ckpt_every, c.prune.eval_every = 2, 2, 2
  return c
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return tiny_world.build(tmp_path_factory.mktemp("world"))


def _gates(name):
  cfg = plan.load_config(os.path.join(REPO, "configs", f"{name}.py"))
  src = plan.source_config(cfg, "prune")
  spec = prune_spec(cfg, src)
  state = init_prune_state(src, spec.target, spec.groups, jax.random.key(0),
                           spec.constraint)
  return set(state.log_alpha), set(state.lambda1)


def test_a_group_kept_whole_gets_no_gates():
  # 2.7B keeps 32 of 32 layers: no layer gates, no layer multipliers.
  assert _gates("sheared_2p7b") == ({"head", "intermediate", "hidden"},) * 2
  # 1.3B keeps 24 of 32: its layer gates stay.
  assert _gates("sheared_1p3b") == ({"layer", "head", "intermediate", "hidden"},) * 2


def _refused(world, tmp_path, *flags):
  path = tmp_path / "cfg.py"
  path.write_text(_CONFIG_FILE.format(tests=os.path.join(REPO, "tests"), hf=world["hf"],
                                      data=world["data"]))
  w = tmp_path / "w"
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "jshear.train", f"--config={path}",
                      f"--workdir={w}", *flags], cwd=REPO, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
  assert "Traceback" not in r.stderr, r.stderr
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and r.stderr.strip().splitlines()[-1] == errors[0], r.stderr
  assert not w.exists() or list(w.iterdir()) == []
  return errors[0]


L = "--config.prune.learned."


@pytest.mark.parametrize("flags,words", [
    ((L + "gate_forward=deterministic",), ["mask_init='importance'", "by their index"]),
    ((L + "gate_forward=deterministic", L + "mask_init=importance", L + "mask_init_band=0.1"),
     ["hidden channels", "no gradient", "mask_init_band_groups"]),
    # bounds (-1, 1): a gate is on with probability 0.65 to 0.93, so keeping 1 of 2 KV
    # groups is out of reach
    ((L + "size_control=projection", L + "log_alpha_bounds=(-1.0, 1.0)",
      L + "mask_init_band_width=0.5"),
     ["1 of 2 kv units", "cannot reach", "log_alpha_bounds=(-1, 1)", "[0.6453, 0.9308]"]),
], ids=["deterministic-uniform", "hidden-band", "unreachable-projection"])
def test_silent_misbehaviour_is_refused(world, tmp_path, flags, words):
  err = _refused(world, tmp_path, *flags)
  for w in words:
    assert w in err, err
