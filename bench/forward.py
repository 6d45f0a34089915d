"""Forward tokens/s of SmolLM2-135M: jshear (jitted, fp32) vs transformers/torch (fp32,
2 threads) on the same batch, timed interleaved in one run.

  python bench/forward.py [--small] [--batch 4 --seq 256]
"""

import argparse

import common  # noqa: F401  (sets paths and env first)
import jax
import numpy as np
import torch
import transformers

from jshear import assets
from jshear.convert.hf_import import read_hf_params
from jshear.model.transformer import forward


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--small", action="store_true", help="fewer rounds (quick check)")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq", type=int, default=256)
  a = p.parse_args()
  torch.set_num_threads(2)
  path = assets.smollm2_hf_dir()
  cfg, params = read_hf_params(path)
  params = jax.device_put(params)
  toks = np.random.default_rng(0).integers(0, cfg.vocab_size, (a.batch, a.seq)).astype(np.int32)
  f = jax.jit(lambda p, t: forward(p, t, cfg=cfg))
  model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  tt = torch.as_tensor(toks, dtype=torch.long)

  def hf():
    with torch.no_grad():
      model(tt)

  t = common.interleaved({"jshear": lambda: f(params, toks).block_until_ready(), "hf": hf},
                         rounds=3 if a.small else 7)
  n = a.batch * a.seq
  common.emit(bench="forward", model="SmolLM2-135M", batch=[a.batch, a.seq], dtype="float32",
              jshear_tokens_per_s=n / t["jshear"], hf_tokens_per_s=n / t["hf"],
              ratio=t["hf"] / t["jshear"])


if __name__ == "__main__":
  main()
