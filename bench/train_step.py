"""Continued-pretraining step tokens/s on SmolLM2-135M (fp32, batch 4 x 256, AdamW): jshear
vs transformers + torch AdamW on the identical model and batch, each in its own process, taking
turns of 3 steps of which the last 2 are timed (`ratio`; the first step of a turn pays for the
other process's memory churn: `ratio_first_after_switch`); plus MFU = model FLOP/s / the fp32
matmul peak measured in the same run, and the step's compile time.

  python bench/train_step.py [--small] [--unroll]
"""

import argparse
import time

import common

from jshear import assets
from jshear.metrics import attention_flops_per_token, model_flops_per_token
from jshear.model.config import ModelConfig


def jshear_contender(tokens, unroll):
  import jax

  from jshear.convert.hf_import import read_hf_params
  cfg, params = read_hf_params(assets.smollm2_hf_dir())
  cfg = cfg.replace(scan_layers=not unroll)
  step, state, batch = common.jshear_train_step(cfg, params, *tokens.shape)
  t0 = time.perf_counter()
  state, m = step(state, batch)
  jax.block_until_ready(m)
  box = {"state": state}

  def run():
    box["state"], m = step(box["state"], batch)
    jax.block_until_ready(m["loss"])
  return run, {"compile_s": time.perf_counter() - t0}


def hf_contender(tokens):
  import torch
  import transformers
  torch.set_num_threads(2)
  model = transformers.AutoModelForCausalLM.from_pretrained(assets.smollm2_hf_dir(),
                                                            dtype=torch.float32)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
  tt = torch.as_tensor(tokens, dtype=torch.long)

  def run():
    loss = model(tt, labels=tt).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
  return run, {}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--small", action="store_true")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--unroll", action="store_true", help="Python loop over layers, no scan")
  a = p.parse_args()
  cfg = ModelConfig.from_hf_dir(assets.smollm2_hf_dir())
  tokens = common.random_tokens(cfg.vocab_size, a.batch, a.seq)  # the batch jshear's step gets
  t, info, first = common.interleaved_procs(
      {"jshear": (jshear_contender, {"tokens": tokens, "unroll": a.unroll}),
       "hf": (hf_contender, {"tokens": tokens})}, rounds=1 if a.small else 3, block=3)
  peak = common.matmul_peak_flops()
  n = a.batch * a.seq
  fpt = model_flops_per_token(cfg) + attention_flops_per_token(cfg, a.seq)
  common.emit(bench="train_step", model="SmolLM2-135M", scan_layers=not a.unroll,
              remat=cfg.remat, batch=[a.batch, a.seq], dtype="float32",
              jshear_tokens_per_s=n / t["jshear"], hf_tokens_per_s=n / t["hf"],
              ratio=t["hf"] / t["jshear"], mfu=n / t["jshear"] * fpt / peak,
              ratio_first_after_switch=first["hf"] / first["jshear"],
              matmul_peak_gflops=peak / 1e9, compile_s=info["jshear"]["compile_s"])


if __name__ == "__main__":
  main()
