"""Zero-shot evaluation, two figures on SmolLM2-135M:

1. As users run it: `lm_eval --model hf` (the pinned lm-eval-harness, its own task configs,
   pointed at the same local documents) vs `python -m jshear.eval tasks`, each a fresh
   subprocess, so start-up, model load and compilation count; wall time and requests/s, and
   the per-task metrics of the two must be identical. The two tools take turns (lm_eval,
   jshear, lm_eval, jshear, ...; `--users-rounds`, default 3), so load from other work on a
   shared machine falls on both; the figure is the median of the per-round ratios.
2. The same requests in the same batches in one process: jshear vs transformers/torch, timed
   interleaved (the first pass of each backend, where jax compiles, is reported apart), plus
   task-level parity through the same scoring code.

  python bench/eval.py [--small] [--tasks piqa,...] [--limit 20] [--users-rounds 3]
                       [--layout packed|padded]

One JSON line per figure: users_wall_s (median seconds per tool, and every round's) and
users_speedup (median of the per-round lm_eval / jshear ratios) (figure 1), requests_per_s (per
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
                    batch_size: str, rounds: int) -> None:
  """Figure 1: both CLIs as subprocesses on the same documents; metrics must match."""
  with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
    _compare_clis(path, names, limit, root, requests, batch_size, rounds, tmp)


def _compare_clis(path, names, limit, root, requests, batch_size, rounds, tmp) -> None:
  env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
  task_arg = ",".join(names)
  task_dir = lm_eval_task_dir(names, root, os.path.join(tmp, "tasks"))

  def lm_cmd(out):
    return [os.path.join(os.path.dirname(sys.executable), "lm_eval"), "--model", "hf",
            "--model_args", f"pretrained={path},dtype=float32", "--tasks", task_arg,
            "--include_path", task_dir, "--limit", str(limit), "--device", "cpu",
            "--batch_size", batch_size, "--output_path", out]

  def js_cmd(out):
    return [sys.executable, "-m", "jshear.eval", "tasks", "--model", path, "--tasks", task_arg,
            "--limit", str(limit), "--output_path", out]

  def read(who, out):
    if who == "lm_eval":
      found = glob.glob(os.path.join(out, "**", "results_*.json"), recursive=True)
      return json.load(open(found[0]))
    return json.load(open(out))

  # Each call is one fresh subprocess in its own output path (lm_eval names its results file
  # by time, so a shared directory would make "which round" ambiguous). The helper's median
  # per tool is kept; the per-round seconds are recorded here for the median ratio, which on
  # a shared machine is steadier than a ratio of two medians taken at different moments.
  builders = {"lm_eval": (lm_cmd, ""), "jshear": (js_cmd, ".json")}
  per_round = {who: [] for who in builders}
  results = {who: [] for who in builders}

  def call(who):
    build, ext = builders[who]
    out = os.path.join(tmp, f"{who}_{len(per_round[who])}{ext}")
    s = timed_run(build(out), os.path.join(tmp, f"{who}_{len(per_round[who])}.log"), env)
    per_round[who].append(s)
    results[who].append(read(who, out))

  load_before = os.getloadavg()[0]
  med = common.interleaved({who: (lambda who=who: call(who)) for who in builders},
                           rounds=rounds, warmup=0)
  ratios = [lm / js for lm, js in zip(per_round["lm_eval"], per_round["jshear"])]
  for who in builders:
    common.emit(bench="eval", figure="users_wall_s", tool=who, value=round(med[who], 1),
                requests_per_s=round(requests / med[who], 2), requests=requests, tasks=names,
                limit=limit, rounds=rounds, per_round_s=[round(x, 1) for x in per_round[who]],
                command=" ".join(builders[who][0]("OUT")))
  common.emit(bench="eval", figure="users_speedup", numerator="jshear", denominator="lm_eval",
              value=round(sorted(ratios)[len(ratios) // 2], 2), statistic="median per-round ratio",
              per_round=[round(r, 2) for r in ratios], rounds=rounds,
              order="lm_eval then jshear in every round", cpus=os.cpu_count(),
              load_avg_1m_before=round(load_before, 2),
              load_avg_1m_after=round(os.getloadavg()[0], 2))
  for i in range(rounds):
    check_same_metrics({who: results[who][i] for who in builders}, names)


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
  p.add_argument("--rounds", type=int, default=1,
                 help="figure 2: timed rounds after the first pass")
  p.add_argument("--users-rounds", type=int, default=3,
                 help="figure 1: rounds of lm_eval then jshear, each tool a fresh subprocess")
  a = p.parse_args()
  if a.small:
    a.tasks, a.limit = "piqa,winogrande,arc_easy", 4
  torch.set_num_threads(os.cpu_count() or 2)
  path = assets.smollm2_hf_dir()
  root = datasets.eval_sets_dir(fetch=True)
  tok = loader.load_tokenizer(path)
  prep = tasks.prepare(tok, a.tasks, a.limit, root)
  if a.users_rounds < 1:
    raise SystemExit("--users-rounds must be at least 1")
  as_users_run_it(path, prep.names, a.limit, root, len(prep.encoded), a.lm_eval_batch_size,
                  a.users_rounds)
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
