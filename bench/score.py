"""Perplexity scoring throughput (`python -m jshear.data score`) against the same model's
forward as the train step computes it and as the held-out eval computes it.

  python bench/score.py [--small] [--batch=8] [--seq=256] [--rounds=5]

Same model, batch and devices for all three; each is compiled first, then the three take
turns for `--rounds` rounds, and the median tokens/s of each is printed with the ratios
(one JSON line per figure). Default model: SmolLM2-135M's shape, random weights (speed does
not depend on the values); --small: a 2-layer model.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jshear import sharding as shd  # noqa: E402
from jshear.data import score as score_mod  # noqa: E402
from jshear.model.config import ModelConfig  # noqa: E402
from jshear.model.loss import nll_sum  # noqa: E402
from jshear.model.params import init_params  # noqa: E402
from jshear.model.transformer import forward  # noqa: E402
from jshear.train.step import make_eval_step  # noqa: E402

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
               num_heads=9, num_kv_heads=3, head_dim=64, tie_embeddings=True)
SMALL = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
             num_heads=4, num_kv_heads=2, head_dim=16)


def _emit(**kw):
  print(json.dumps(kw), flush=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--small", action="store_true")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--rounds", type=int, default=5)
  a = ap.parse_args()
  cfg = ModelConfig(**(SMALL if a.small else SMOLLM2), scan_layers=False)
  params = init_params(cfg, jax.random.key(0))
  mesh = shd.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(1, cfg.vocab_size, (a.batch, a.seq)).astype(np.int32),
           "segment_ids": np.ones((a.batch, a.seq), np.int32),
           "positions": np.tile(np.arange(a.seq, dtype=np.int32), (a.batch, 1))}
  with jax.set_mesh(mesh):
    b = shd.host_local_batch_to_global(batch, mesh)
    fns = {
        "score": score_mod._row_fn(cfg, mesh),   # what `jshear.data score` runs per batch
        "eval_forward": jax.jit(make_eval_step(cfg)),
        "train_forward": jax.jit(lambda p, x: nll_sum(forward(
            p, x["tokens"], cfg=cfg, positions=x["positions"], segment_ids=x["segment_ids"]),
            x)[0]),
    }
    call = {"score": lambda: fns["score"](params, b),
            "eval_forward": lambda: fns["eval_forward"](params, None, b),
            "train_forward": lambda: fns["train_forward"](params, b)}
    for f in call.values():
      jax.block_until_ready(f())
    times = {k: [] for k in call}
    for _ in range(a.rounds):
      for k, f in call.items():
        t = time.perf_counter()
        jax.block_until_ready(f())
        times[k].append(time.perf_counter() - t)
  tokens = a.batch * a.seq
  rate = {k: tokens / float(np.median(v)) for k, v in times.items()}
  shape = "small" if a.small else "smollm2-135m"
  for k, r in rate.items():
    _emit(bench="score", figure=f"{k}_tokens_per_s", value=round(r, 1), model=shape,
          batch=a.batch, seq=a.seq, devices=jax.device_count(), rounds=a.rounds)
  _emit(bench="score", figure="score_over_eval_forward",
        value=round(rate["score"] / rate["eval_forward"], 3), model=shape)
  _emit(bench="score", figure="score_over_train_forward",
        value=round(rate["score"] / rate["train_forward"], 3), model=shape)


if __name__ == "__main__":
  main()
