"""Zero-shot scoring: requests/s of jshear vs transformers/torch on SmolLM2-135M, on the same
requests and the same batches, timed interleaved in one run; plus task-level parity (the same
metrics from both models through the same scoring code, in accuracy points).

  python bench/eval.py [--small] [--tasks piqa,...] [--limit 20] [--layout packed|padded]

One JSON line per figure: requests_per_s (per backend), requests_per_s_ratio (jshear /
transformers), parity_points (per task and metric), max_abs_loglik_diff. The first pass of
each backend (jax compiles there) is reported separately and not timed into requests/s.
"""

import argparse
import os
import time

import common  # noqa: F401  (sets paths and env first)
import jax
import numpy as np
import torch
import transformers

from jshear import assets
from jshear.assets import eval_sets as datasets
from jshear.convert.hf_import import read_hf_params
from jshear.eval import loader, scoring, tasks


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--small", action="store_true", help="3 tasks x 4 documents (quick check)")
  p.add_argument("--tasks", default="all")
  p.add_argument("--limit", type=int, default=20)
  p.add_argument("--layout", default="packed", choices=["packed", "padded"])
  p.add_argument("--tokens-per-batch", type=int, default=2048)
  p.add_argument("--rounds", type=int, default=1, help="timed rounds after the first pass")
  a = p.parse_args()
  if a.small:
    a.tasks, a.limit = "piqa,winogrande,lambada", 4
  torch.set_num_threads(os.cpu_count() or 2)
  path = assets.smollm2_hf_dir()
  root = datasets.eval_sets_dir(fetch=True)
  tok = loader.load_tokenizer(path)
  prep = tasks.prepare(tok, a.tasks, a.limit, root)
  cfg, np_params = read_hf_params(path)
  params = jax.device_put(np_params)
  max_len = min(cfg.max_position_embeddings, 4096)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      path, dtype=torch.float32, attn_implementation="sdpa").eval()
  backends = {"jshear": scoring.JaxBackend(cfg, params, max_length=max_len),
              "transformers": scoring.TorchBackend(model, max_length=max_len)}
  n = len(prep.encoded)
  plan = scoring.plan_summary(prep.encoded, max_len, a.tokens_per_batch, a.layout)
  common.emit(bench="eval", figure="workload", tasks=prep.names, limit=a.limit, requests=n,
              layout=a.layout, batches=sum(plan["shapes"].values()), shapes=len(plan["shapes"]),
              real_tokens=plan["real_tokens"], fill=round(plan["fill"], 3))

  def run(name):
    return scoring.score_requests(backends[name], prep.encoded, tokens_per_batch=a.tokens_per_batch,
                                  layout=a.layout, progress=False)

  first, results = {}, {}
  for name in backends:
    t = time.perf_counter()
    results[name] = run(name)
    first[name] = time.perf_counter() - t
    common.emit(bench="eval", figure="first_pass_s", backend=name, value=round(first[name], 2),
                note="includes jit compilation" if name == "jshear" else "eager")
  times = common.interleaved({k: (lambda k=k: run(k)) for k in backends}, rounds=a.rounds, warmup=0)
  for name, s in times.items():
    common.emit(bench="eval", figure="requests_per_s", backend=name, value=round(n / s, 2),
                tokens_per_s=round(plan["real_tokens"] / s, 1), seconds=round(s, 2), requests=n)
  common.emit(bench="eval", figure="requests_per_s_ratio", numerator="jshear",
              denominator="transformers", value=round(times["transformers"] / times["jshear"], 3))

  ll_j, g_j = results["jshear"]
  ll_t, g_t = results["transformers"]
  common.emit(bench="eval", figure="max_abs_loglik_diff", value=float(np.max(np.abs(ll_j - ll_t))),
              greedy_flag_mismatches=int(np.sum(g_j != g_t)), requests=n)
  for name in prep.names:
    metr = {}
    for who, (ll, g) in results.items():
      lls = [ll[x:y] for x, y in prep.spans[name]]
      gs = [g[x:y] for x, y in prep.spans[name]]
      metr[who] = tasks.task_metrics(tasks.TASKS[name], prep.insts[name], lls, gs)
    for m in tasks.TASKS[name].metrics:
      vj, vt = metr["jshear"][m], metr["transformers"][m]
      scale = 1.0 if m == "perplexity" else 100.0
      common.emit(bench="eval", figure="parity_points" if m != "perplexity" else "parity_perplexity",
                  task=name, metric=m, docs=len(prep.insts[name]), jshear=round(vj * scale, 4),
                  transformers=round(vt * scale, 4), diff=round(abs(vj - vt) * scale, 4))


if __name__ == "__main__":
  main()
