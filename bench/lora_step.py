"""LoRA vs full continued pretraining: step time, optimizer-state bytes and the compiled
step's memory, same model and batch, as ratios (LoRA / full). Both steps are the continue
stage's, built by `jshear.train.compile.stage_step` as the loop builds them, and timed
interleaved. Targets (issue 27): optimizer state below 5% of full's, step time at most 1.0x.

  python bench/lora_step.py [--small] [--rank 16] [--targets q,k,v,o,gate,up,down]

Default: SmolLM2-135M (fp32, batch 4 x 256). --small: a random 4-layer model of SmolLM2's
width (batch 2 x 128), fewer rounds. Memory is XLA's compile-time analysis on this backend
(arguments + temporaries; the state is donated), not a measured peak.
"""

import argparse

import common
import jax
import numpy as np

from jshear.model.config import ModelConfig
from jshear.model.params import init_params


def _bytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--small", action="store_true")
  p.add_argument("--batch", type=int, default=0)
  p.add_argument("--seq", type=int, default=0)
  p.add_argument("--rank", type=int, default=16)
  p.add_argument("--targets", default="q,k,v,o,gate,up,down")
  a = p.parse_args()
  if a.small:
    cfg = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=4,
                      num_heads=9, num_kv_heads=3, head_dim=64, tie_embeddings=True)
    params = jax.device_get(jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0)))
    name, batch, seq = "random-4L-576d", a.batch or 2, a.seq or 128
  else:
    from jshear import assets
    from jshear.convert.hf_import import read_hf_params
    cfg, params = read_hf_params(assets.smollm2_hf_dir())
    name, batch, seq = "SmolLM2-135M", a.batch or 4, a.seq or 256
  toks = common.random_tokens(cfg.vocab_size, batch, seq)
  data = {"tokens": toks, "segment_ids": np.ones_like(toks),
          "positions": np.tile(np.arange(seq, dtype=np.int32), (batch, 1))}
  lora = {"rank": a.rank, "alpha": 2.0 * a.rank, "targets": a.targets}
  runs, info = {}, {}
  for kind, settings in (("full", None), ("lora", lora)):
    plan = common.jshear_stage_step(cfg, batch, lora=settings)
    with jax.set_mesh(plan.batch_sharding.mesh):
      mem = plan.lower(batch, seq).compile().memory_analysis()
    state = jax.jit(plan.make_state, out_shardings=plan.shardings)(jax.device_put(params), None)
    info[kind] = {"opt_bytes": _bytes(state["opt_state"]),
                  "trainable": _bytes(state["lora"] if settings else state["params"]),
                  "temp_bytes": int(getattr(mem, "temp_size_in_bytes", 0)),
                  "arg_bytes": int(getattr(mem, "argument_size_in_bytes", 0))}
    box = {"s": state}

    def one(step=plan.step, box=box):
      box["s"], m = step(box["s"], data)
      jax.block_until_ready(m["loss"])
    runs[kind] = one
  t = common.interleaved(runs, rounds=2 if a.small else 5)
  peak = {k: v["temp_bytes"] + v["arg_bytes"] for k, v in info.items()}
  common.emit(bench="lora_step", model=name, batch=[batch, seq], rank=a.rank,
              targets=a.targets, full_step_s=t["full"], lora_step_s=t["lora"],
              step_time_ratio=t["lora"] / t["full"],
              full_opt_state_bytes=info["full"]["opt_bytes"],
              lora_opt_state_bytes=info["lora"]["opt_bytes"],
              opt_state_ratio=info["lora"]["opt_bytes"] / info["full"]["opt_bytes"],
              trainable_ratio=info["lora"]["trainable"] / info["full"]["trainable"],
              full_peak_bytes=peak["full"], lora_peak_bytes=peak["lora"],
              peak_ratio=peak["lora"] / peak["full"],
              temp_ratio=info["lora"]["temp_bytes"] / max(info["full"]["temp_bytes"], 1))


if __name__ == "__main__":
  main()
