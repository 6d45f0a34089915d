"""Two real processes (4 fake CPU devices each, gloo collectives, coordinator on 127.0.0.1)
run pruning steps on one global 8-device mesh and match one process with 8 devices."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import tiny_world
from jshear.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = """
import sys
sys.path.insert(0, {tests!r})
import tiny_world
def get_config():
  c = tiny_world.config({{"hf": {hf!r}, "data": {data!r}}})
  c.stages = "prune"
  c.prune.steps, c.prune.ckpt_every, c.prune.eval_every = 4, 2, 2
  c.final_eval = False
  return c
"""


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(workdir):
  return {r["step"]: r["loss"] for r in read_metrics(workdir) if "lm_loss" in r}


def _evals(workdir):
  return {r["step"]: r for r in read_metrics(workdir) if "eval/code/loss" in r}


@pytest.fixture(scope="module")
def cfg_path(tmp_path_factory):
  root = tmp_path_factory.mktemp("mh")
  world = tiny_world.build(root / "world")
  path = root / "cfg.py"
  path.write_text(CONFIG.format(tests=os.path.join(REPO, "tests"), hf=world["hf"],
                                data=world["data"]))
  return path


def _cmd(cfg_path, workdir, *extra):
  return [sys.executable, "-m", "jshear.train", f"--config={cfg_path}", f"--workdir={workdir}",
          *extra]


def test_two_processes_match_one(cfg_path, tmp_path):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  env1 = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
              XLA_FLAGS="--xla_force_host_platform_device_count=8")
  subprocess.run(_cmd(cfg_path, one), cwd=REPO, env=env1, check=True, capture_output=True,
                 timeout=600)
  port = _free_port()
  env2 = dict(env1, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  procs = [subprocess.Popen(
      _cmd(cfg_path, two, f"--config.distributed.coordinator=127.0.0.1:{port}",
           "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"),
      cwd=REPO, env=env2, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert "'process_count': 2" in outs[0] and "'global_devices': 8" in outs[0]
  a, b = _losses(one), _losses(two)
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-5)
  ea, eb = _evals(one), _evals(two)
  for s in ea:
    np.testing.assert_allclose(eb[s]["eval/code/loss"], ea[s]["eval/code/loss"], rtol=1e-5)
  # Both processes took part in the checkpoint; the final step is the latest.
  assert os.path.isdir(os.path.join(two, "prune", "checkpoints", "4"))
