"""Launchers' dry-run modes print the exact per-host commands."""

import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dry(script, *args, **env):
  e = dict(os.environ, DRY_RUN="1", **env)
  r = subprocess.run(["bash", os.path.join(REPO, "launch", script), *args], env=e,
                     capture_output=True, text=True, check=True)
  return r.stdout.strip().splitlines()


def test_slurm_prints_one_command_per_node():
  lines = _dry("slurm.sbatch", "configs/sheared_2p7b.py", "/ckpt/r", "--config.seed=3",
               NODES="gpu01 gpu02 gpu03")
  assert len(lines) == 3
  for i, (line, node) in enumerate(zip(lines, ("gpu01", "gpu02", "gpu03"))):
    assert line.startswith(f"[{node}]") and f"SLURM_PROCID={i}" in line
    assert line.endswith("-m jshear.train --config=configs/sheared_2p7b.py --workdir=/ckpt/r "
                         "--config.seed=3")


def test_tpu_pod_runs_the_same_command_on_all_workers():
  lines = _dry("tpu_pod.sh", "configs/sheared_2p7b.py", "/mnt/r", TPU="v5p-64", ZONE="z",
               WORKERS="2")
  assert lines[0].startswith("gcloud compute tpus tpu-vm ssh v5p-64 --zone=z --worker=all")
  assert lines[1].startswith("[worker 0]") and "--workdir=/mnt/r" in lines[1]
  assert lines[1][len("[worker 0]"):] == lines[2][len("[worker 1]"):]


def test_gke_renders_the_jobset():
  lines = _dry("gke.sh", JOB_NAME="j1", IMAGE="img:1", CONFIG="configs/demo.py", WORKDIR="/mnt/w",
               TPU_TYPE="tpu-v5p-slice", TPU_TOPOLOGY="2x2x2", NUM_SLICES="1",
               HOSTS_PER_SLICE="2", CHIPS_PER_HOST="4")
  text = "\n".join(lines)
  assert "kind: JobSet" in text and "name: j1" in text and "${" not in text
  assert '"--config=configs/demo.py", "--workdir=/mnt/w"' in text
  assert sum(l.startswith("[slice 0 host") for l in lines) == 2
