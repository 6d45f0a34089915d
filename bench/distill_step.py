"""Continued-pretraining step tokens/s with and without logit distillation: the same student
(the teacher with half its inner layers dropped by LayerCHOP max_gap), the same batch, timed
interleaved in one run; the teacher forward runs inside the jitted step.

  python bench/distill_step.py [--small] [--real] [--hidden]

Default: a random 8-layer, 256-wide LLaMA teacher (batch 4 x 128). --real: SmolLM2-135M as
the teacher and its 20-layer LayerCHOP as the student (batch 4 x 256, fp32).
--hidden adds hidden-state matching at two student layers.
"""

import argparse
import time

import common
import jax
import numpy as np

from jshear import distill
from jshear.model.config import ModelConfig
from jshear.model.params import count_params, init_params
from jshear.prune import layerchop
from jshear.prune.finalize import finalize


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--small", action="store_true", help="fewer timing rounds")
  p.add_argument("--real", action="store_true", help="SmolLM2-135M teacher")
  p.add_argument("--hidden", action="store_true", help="also match hidden states")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq", type=int, default=0)
  a = p.parse_args()
  if a.real:
    from jshear import assets
    from jshear.convert.hf_import import read_hf_params
    tcfg, tparams = read_hf_params(assets.smollm2_hf_dir())
    keep, name, seq = 20, "SmolLM2-135M", a.seq or 256
  else:
    tcfg = ModelConfig(vocab_size=4096, hidden_size=256, intermediate_size=688, num_layers=8,
                       num_heads=4, num_kv_heads=4, head_dim=64)
    tparams = jax.device_get(init_params(tcfg, jax.random.key(0)))
    keep, name, seq = 4, "random-8L-256d", a.seq or 128
  kept = np.nonzero(layerchop.layer_mask(tcfg.num_layers, keep, "max_gap"))[0]
  scfg, sparams = finalize(tcfg, tparams, {"layer": layerchop.layer_mask(tcfg.num_layers, keep,
                                                                         "max_gap")})
  sparams = jax.device_get(sparams)

  hidden = distill.parse_hidden_layers(f"1,{keep - 2}" if a.hidden else "", keep)
  spec = distill.teacher_spec(scfg, tcfg, hidden, kept_layers=kept)
  d = distill.Distiller(scfg, [spec], weight=1.0, temperature=2.0,
                        hidden_layers=[s for s, _ in hidden])
  # The continue stage's step as the loop compiles it, without and with the teacher.
  plans = {"plain": common.jshear_stage_step(scfg, a.batch),
           "kd": common.jshear_stage_step(scfg, a.batch, distiller=d)}
  plain, kd = plans["plain"].step, plans["kd"].step
  teachers = [jax.device_put(tparams)]
  toks = np.random.default_rng(0).integers(0, tcfg.vocab_size, (a.batch, seq)).astype(np.int32)
  batch = {"tokens": toks, "segment_ids": np.ones_like(toks),
           "positions": np.tile(np.arange(seq, dtype=np.int32), (a.batch, 1))}
  box = {k: jax.jit(p.make_state, out_shardings=p.shardings)(jax.device_put(sparams), None)
         for k, p in plans.items()}
  compile_s = {}
  for k, fn, extra in (("plain", plain, ()), ("kd", kd, (teachers,))):
    t0 = time.perf_counter()
    box[k], m = fn(box[k], batch, *extra)
    jax.block_until_ready(m["loss"])
    compile_s[k] = time.perf_counter() - t0

  def run_plain():
    box["plain"], m = plain(box["plain"], batch)
    jax.block_until_ready(m["loss"])

  def run_kd():
    box["kd"], m = kd(box["kd"], batch, teachers)
    jax.block_until_ready(m["loss"])

  t = common.interleaved({"plain": run_plain, "kd": run_kd}, rounds=2 if a.small else 5)
  n = a.batch * seq
  common.emit(bench="distill_step", model=name, student_layers=keep, batch=[a.batch, seq],
              dtype="float32", hidden_matching=bool(a.hidden),
              teacher_params=count_params(tparams), student_params=count_params(sparams),
              plain_tokens_per_s=n / t["plain"], distill_tokens_per_s=n / t["kd"],
              slowdown=t["kd"] / t["plain"], compile_s=compile_s,
              device=jax.devices()[0].device_kind)


if __name__ == "__main__":
  main()
