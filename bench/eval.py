"""Zero-shot evaluation, two figures on SmolLM2-135M:

1. As users run it: `lm_eval --model hf` (the pinned lm-eval-harness, its own task configs,
   pointed at the same local documents) vs `python -m jshear.eval tasks`, each a fresh
   subprocess, so start-up, model load and compilation count; wall time and requests/s, and
   the per-task metrics of the two must be identical.
2. The same requests in the same batches in one process: jshear vs transformers/torch, timed
   interleaved (the first pass of each backend, where jax compiles, is reported apart), plus
   task-level parity through the same scoring code.

  python bench/eval.py [--small] [--tasks piqa,...] [--limit 20] [--layout packed|padded]

One JSON line per figure: users_wall_s and users_speedup (figure 1), requests_per_s (per
backend), requests_per_s_ratio (jshear / transformers), parity_points (per task and metric),
max_abs_loglik_diff (figure 2).
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import common  # noqa: F401  (sets paths and env first)
import jax
import numpy as np
import torch
import transformers

from jshear import assets
from jshear.assets import eval_sets as datasets
from jshear.convert.hf_import import read_hf_params
from jshear.eval import datasets as eval_datasets, loader, scoring, tasks


SIX_TASKS = "piqa,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa"
# jshear task -> the pinned lm-eval task config it mirrors (lm_eval/tasks/...).
LM_EVAL_YAML = {"piqa": "piqa/piqa.yaml", "hellaswag": "hellaswag/hellaswag.yaml",
                "winogrande": "winogrande/default.yaml", "arc_easy": "arc/arc_easy.yaml",
                "arc_challenge": "arc/arc_challenge.yaml", "sciq": "sciq/sciq.yaml",
                "openbookqa": "openbookqa/openbookqa.yaml"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lm_eval_task_dir(names, root: str, out: str) -> str:
  """lm-eval task configs under the same names that read jshear's local Arrow splits: each
  includes the harness's own config and swaps only the dataset (no hub access)."""
  import lm_eval
  base = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
  os.makedirs(out, exist_ok=True)
  for name in names:
    if name not in LM_EVAL_YAML:
      raise SystemExit(f"--tasks {name}: no lm-eval mapping here (known: {sorted(LM_EVAL_YAML)})")
    split = eval_datasets.hf_split_dir(root, tasks.TASKS[name].source)
    data_files = sorted(glob.glob(os.path.join(split, "data-*.arrow")))
    with open(os.path.join(out, f"{name}.yaml"), "w") as f:
      f.write(json.dumps({   # JSON is YAML; only validation docs exist locally
          "include": os.path.join(base, LM_EVAL_YAML[name]), "task": name,
          "dataset_path": "arrow", "dataset_name": None,
          "dataset_kwargs": {"data_files": {"validation": data_files},
                             "cache_dir": os.path.join(out, "hf_cache")},
          "training_split": None, "test_split": None}, indent=1))
  return out


def timed_run(cmd, log: str, env) -> float:
  t = time.perf_counter()
  with open(log, "w") as f:
    r = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
  if r.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n" + open(log).read()[-3000:])
  return time.perf_counter() - t


def as_users_run_it(path: str, names, limit: int, root: str, requests: int,
                    batch_size: str) -> None:
  """Figure 1: both CLIs as subprocesses on the same documents; metrics must match."""
  with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
    _compare_clis(path, names, limit, root, requests, batch_size, tmp)


def _compare_clis(path, names, limit, root, requests, batch_size, tmp) -> None:
  env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
  task_arg = ",".join(names)
  lm_cmd = [os.path.join(os.path.dirname(sys.executable), "lm_eval"), "--model", "hf",
            "--model_args", f"pretrained={path},dtype=float32", "--tasks", task_arg,
            "--include_path", lm_eval_task_dir(names, root, os.path.join(tmp, "tasks")),
            "--limit", str(limit), "--device", "cpu", "--batch_size", batch_size,
            "--output_path", os.path.join(tmp, "lm_eval")]
  js_cmd = [sys.executable, "-m", "jshear.eval", "tasks", "--model", path, "--tasks", task_arg,
            "--limit", str(limit), "--output_path", os.path.join(tmp, "jshear.json")]
  secs = {"lm_eval": timed_run(lm_cmd, os.path.join(tmp, "lm_eval.log"), env),
          "jshear": timed_run(js_cmd, os.path.join(tmp, "jshear.log"), env)}
  res = {"lm_eval": json.load(open(glob.glob(os.path.join(tmp, "lm_eval", "**", "results_*.json"),
                                             recursive=True)[0])),
         "jshear": json.load(open(os.path.join(tmp, "jshear.json")))}
  commands = {"lm_eval": lm_cmd, "jshear": js_cmd}
  for who, s in secs.items():
    common.emit(bench="eval", figure="users_wall_s", tool=who, value=round(s, 1),
                requests_per_s=round(requests / s, 2), requests=requests, tasks=names,
                limit=limit, command=" ".join(commands[who]))
  common.emit(bench="eval", figure="users_speedup", numerator="jshear", denominator="lm_eval",
              value=round(secs["lm_eval"] / secs["jshear"], 2))
  check_same_metrics(res, names)


def check_same_metrics(res: dict, names) -> None:
  diffs = []
  for name in names:
    for m in tasks.TASKS[name].metrics:
      a, b = (res[w]["results"][name][f"{m},none"] for w in ("jshear", "lm_eval"))
      if abs(a - b) > 1e-9:
        diffs.append(f"{name}/{m}: jshear {a} vs lm_eval {b}")
  common.emit(bench="eval", figure="users_metrics_identical", value=not diffs, diffs=diffs)
  if diffs:
    raise SystemExit("lm_eval and jshear disagree: " + "; ".join(diffs))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--small", action="store_true", help="2-3 tasks x 4 documents (quick check)")
  p.add_argument("--tasks", default=SIX_TASKS)
  p.add_argument("--limit", type=int, default=20)
  p.add_argument("--lm-eval-batch-size", default="16", help="lm_eval --batch_size")
  p.add_argument("--layout", default="packed", choices=["packed", "padded"])
  p.add_argument("--tokens-per-batch", type=int, default=2048)
  p.add_argument("--rounds", type=int, default=1, help="timed rounds after the first pass")
  a = p.parse_args()
  if a.small:
    a.tasks, a.limit = "piqa,winogrande,arc_easy", 4
  torch.set_num_threads(os.cpu_count() or 2)
  path = assets.smollm2_hf_dir()
  root = datasets.eval_sets_dir(fetch=True)
  tok = loader.load_tokenizer(path)
  prep = tasks.prepare(tok, a.tasks, a.limit, root)
  as_users_run_it(path, prep.names, a.limit, root, len(prep.encoded), a.lm_eval_batch_size)
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
