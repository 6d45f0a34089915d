"""Cost of learning masks: tokens/s of a pruning step (hard-concrete sampling, masked
forward, Lagrangian, three optimizer groups) vs a plain training step of the same source
model on the same batch, timed interleaved. Target: <= 10% slower.

  python bench/prune_step.py [--small]
"""

import argparse

import common
import jax

from jshear import assets
from jshear.convert.hf_import import read_hf_params
from jshear.prune.targets import TargetShape


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--small", action="store_true")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq", type=int, default=256)
  a = p.parse_args()
  cfg, params = read_hf_params(assets.smollm2_hf_dir())
  target = TargetShape(20, 6, 2, 384, 1024)
  runs = {}
  for name, groups in (("plain", None), ("prune", ("layer", "kv", "intermediate", "hidden"))):
    step, state, batch = common.jshear_train_step(cfg, params, a.batch, a.seq, groups, target)
    box = {"s": state}

    def one(step=step, box=box, batch=batch):
      box["s"], m = step(box["s"], batch)
      jax.block_until_ready(m["loss"])
    runs[name] = one
  t = common.interleaved(runs, rounds=2 if a.small else 5)
  n = a.batch * a.seq
  common.emit(bench="prune_step", model="SmolLM2-135M", batch=[a.batch, a.seq],
              plain_tokens_per_s=n / t["plain"], prune_tokens_per_s=n / t["prune"],
              overhead=t["prune"] / t["plain"] - 1.0)


if __name__ == "__main__":
  main()
