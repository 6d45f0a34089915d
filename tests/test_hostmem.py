"""Entry points re-exec with glibc's huge-page tunable, and it does cut XLA:CPU's page faults."""

import json
import os
import subprocess
import sys

import pytest

from jshear import hostmem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Re-execs like an entry point, then counts the minor page faults of fresh XLA buffers.
_CHILD = r"""
import json, os, resource, sys
from jshear import hostmem
hostmem.reexec_with_huge_pages()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: x * 2.0 + 1.0)
x = jnp.ones((32 * 1024 * 1024,), jnp.float32)  # 128 MiB per buffer
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
  f(x).block_until_ready()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"tunables": os.environ.get("GLIBC_TUNABLES", ""), "argv": sys.argv[1:],
                  "faults": faults}))
"""


def _run_child(extra_env):
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hostmem.OPT_OUT)}
  env.update(extra_env, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  out = subprocess.run([sys.executable, "-c", _CHILD, "--flag=1"], env=env, capture_output=True,
                       text=True, timeout=300, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_with_tunable_keeps_other_tunables_and_replaces_ours():
  assert hostmem.with_tunable(None) == hostmem.TUNABLE
  assert hostmem.with_tunable("glibc.malloc.arena_max=2") == \
      "glibc.malloc.arena_max=2:" + hostmem.TUNABLE
  assert hostmem.with_tunable("glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2") == \
      "glibc.malloc.arena_max=2:" + hostmem.TUNABLE


def test_needs_reexec_only_where_it_helps(tmp_path):
  glibc_linux = sys.platform == "linux" and __import__("platform").libc_ver()[0] == "glibc"
  assert hostmem.needs_reexec({}, "madvise") == glibc_linux
  assert not hostmem.needs_reexec({}, "always")  # the kernel already backs malloc with THP
  assert not hostmem.needs_reexec({}, "never")
  assert not hostmem.needs_reexec({}, "")
  assert not hostmem.needs_reexec({hostmem.OPT_OUT: "0"}, "madvise")
  assert not hostmem.needs_reexec({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise")
  f = tmp_path / "enabled"
  f.write_text("always [madvise] never\n")
  assert hostmem.thp_mode(str(f)) == "madvise"
  assert hostmem.thp_mode(str(tmp_path / "absent")) == ""


def test_reexec_sets_the_tunable_and_cuts_page_faults():
  if not hostmem.needs_reexec({}):
    # Nothing to do on this machine: the entry point must then leave the process alone.
    assert _run_child({})["tunables"] == ""
    return
  plain = _run_child({hostmem.OPT_OUT: "0"})
  huge = _run_child({})
  assert plain["tunables"] == ""
  assert huge["tunables"] == hostmem.TUNABLE
  assert huge["argv"] == ["--flag=1"]  # the same command line survives the re-exec
  # 4 steps x 128 MiB fresh output: ~130k faults with 4 KiB pages, a few hundred with THP.
  assert plain["faults"] > 20_000, plain
  assert huge["faults"] * 8 < plain["faults"], (huge, plain)


@pytest.mark.parametrize("module", ["jshear.train", "jshear.eval"])
def test_entry_points_reexec(module, tmp_path):
  """Every interpreter start prints its tunables (sitecustomize), so a re-exec shows twice."""
  (tmp_path / "sitecustomize.py").write_text(
      "import os\nprint('TUNABLES=' + os.environ.get('GLIBC_TUNABLES', ''), flush=True)\n")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hostmem.OPT_OUT)}
  env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), REPO])
  out = subprocess.run([sys.executable, "-m", module, "--help"], env=env, capture_output=True,
                       text=True, timeout=120).stdout  # absl exits 1 after --help
  starts = [l for l in out.splitlines() if l.startswith("TUNABLES=")]
  want = ["TUNABLES=", "TUNABLES=" + hostmem.TUNABLE] if hostmem.needs_reexec({}) else ["TUNABLES="]
  assert starts == want, out[:2000]
