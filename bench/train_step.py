"""Continued-pretraining step tokens/s on SmolLM2-135M (fp32, batch 4 x 256, AdamW): jshear
vs transformers + torch AdamW on the identical model and batch, timed interleaved; plus MFU
= model FLOP/s / the fp32 matmul peak measured in the same run, and the step's compile time.

  python bench/train_step.py [--small]
"""

import argparse
import time

import common
import jax
import numpy as np
import torch
import transformers

from jshear import assets
from jshear.convert.hf_import import read_hf_params
from jshear.metrics import attention_flops_per_token, model_flops_per_token


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--small", action="store_true")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--unroll", action="store_true", help="Python loop over layers, no scan")
  a = p.parse_args()
  torch.set_num_threads(2)
  path = assets.smollm2_hf_dir()
  cfg, params = read_hf_params(path)
  cfg = cfg.replace(scan_layers=not a.unroll)
  step, state, batch = common.jshear_train_step(cfg, params, a.batch, a.seq)
  t0 = time.perf_counter()
  state, m = step(state, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  box = {"state": state}

  def ours():
    box["state"], m = step(box["state"], batch)
    jax.block_until_ready(m["loss"])

  model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
  tt = torch.as_tensor(batch["tokens"], dtype=torch.long)

  def hf():
    loss = model(tt, labels=tt).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)

  t = common.interleaved({"jshear": ours, "hf": hf}, rounds=2 if a.small else 5)
  peak = common.matmul_peak_flops()
  n = a.batch * a.seq
  fpt = model_flops_per_token(cfg) + attention_flops_per_token(cfg, a.seq)
  common.emit(bench="train_step", model="SmolLM2-135M", scan_layers=not a.unroll, batch=[a.batch, a.seq], dtype="float32",
              jshear_tokens_per_s=n / t["jshear"], hf_tokens_per_s=n / t["hf"],
              ratio=t["hf"] / t["jshear"], mfu=n / t["jshear"] * fpt / peak,
              matmul_peak_gflops=peak / 1e9, compile_s=compile_s)


if __name__ == "__main__":
  main()
