"""Two real processes (4 fake CPU devices each, gloo collectives, coordinator on 127.0.0.1)
run pruning steps on one global 8-device mesh and match one process with 8 devices; and
`sharding.to_host` refuses an array split across the two processes."""

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

# Each process builds one replicated and one data-sharded global array over 8 devices.
TO_HOST = """
import sys
import jax, numpy as np
from jshear import distributed, sharding as shd
from jshear.errors import JShearError
distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
mesh = shd.make_mesh({"data": 8})
full = np.arange(16, dtype=np.float32).reshape(8, 2)
def make(sharding):
  return jax.make_array_from_callback(full.shape, sharding, lambda idx: full[idx])
rep = make(shd.replicated(mesh))
split = make(shd.batch_sharding(mesh))
assert not rep.is_fully_addressable and not split.is_fully_addressable
np.testing.assert_array_equal(shd.to_host(rep), full)
try:
  shd.to_host(split)
  print("NO ERROR")
except JShearError as e:
  print("REFUSED:", e)
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


def _spawn_two(args_for, env):
  procs = [subprocess.Popen(args_for(i), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs


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
  outs = _spawn_two(lambda i: _cmd(
      cfg_path, two, f"--config.distributed.coordinator=127.0.0.1:{port}",
      "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"), env2)
  assert "'process_count': 2" in outs[0] and "'global_devices': 8" in outs[0]
  a, b = _losses(one), _losses(two)
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-5)
  ea, eb = _evals(one), _evals(two)
  for s in ea:
    np.testing.assert_allclose(eb[s]["eval/code/loss"], ea[s]["eval/code/loss"], rtol=1e-5)
  # Both processes took part in the checkpoint; the final step is the latest.
  assert os.path.isdir(os.path.join(two, "prune", "checkpoints", "4"))


def test_to_host_refuses_array_split_across_processes():
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  port = _free_port()
  outs = _spawn_two(lambda i: [sys.executable, "-c", TO_HOST, f"127.0.0.1:{port}", str(i)], env)
  for out in outs:
    assert "REFUSED: to_host: array of shape (8, 2) is split across processes" in out, out[-3000:]
