"""Validation loss against training FLOPs for the growth runs (docs/growth.md).

  .venv/bin/python docs/growth_runs/curves.py runs/grow_scratch runs/grow_stack ... \
      --out docs/growth_runs

Reads each run's metrics.jsonl (in-loop evals on the validation rows, every
pretrain.eval_every steps) and its config.json (the model shape of each stage), and puts
every eval at the FLOPs spent up to it: steps x batch x seq_len x FLOPs a token
(`jshear.metrics`, matmuls plus causal attention) of the model that stage trained, summed
over the stages before it. Writes curves.md (the loss of every run at each eval) and
curves.png.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from jshear.metrics import attention_flops_per_token, model_flops_per_token, read_metrics
from jshear.model.config import ModelConfig


def _flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  return model_flops_per_token(cfg) + attention_flops_per_token(cfg, seq_len)


def curve(run: str) -> list[tuple[float, float]]:
  """[(cumulative training FLOPs, mean validation loss over domains)] of one run."""
  with open(os.path.join(run, "config.json")) as f:
    cfg = json.load(f)
  seq = int(cfg["data"]["seq_len"])
  shape = {k: cfg["model"][k] for k in ("vocab_size", "hidden_size", "intermediate_size",
                                        "num_layers", "num_heads", "num_kv_heads", "head_dim",
                                        "tie_embeddings", "family")}
  small = ModelConfig(**shape)
  factor = int(cfg.get("grow", {}).get("factor", 0) or 0) or 1
  evals = [r for r in read_metrics(run) if any(k.startswith("eval/") for k in r)]
  base, out = 0.0, []
  for stage in ("pretrain", "pretrain_2"):
    block = cfg.get(stage) or {}
    merged = {**cfg["pretrain"], **block}
    model = small if stage == "pretrain" else small.replace(num_layers=small.num_layers * factor)
    per_step = int(merged["batch_size"]) * seq * _flops_per_token(model, seq)
    recs = [r for r in evals if r["stage"] == stage]
    for r in recs:
      losses = [v for k, v in r.items() if k.startswith("eval/") and k.endswith("/loss")]
      out.append((base + r["step"] * per_step, float(np.mean(losses))))
    if recs or stage == "pretrain":
      base += int(merged["steps"]) * per_step
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("runs", nargs="+")
  ap.add_argument("--out", required=True)
  a = ap.parse_args()
  curves = {os.path.basename(r.rstrip("/")): curve(r) for r in a.runs}
  lines = ["| run | TFLOPs | validation loss (mean over domains) |", "|---|---:|---:|"]
  for name, pts in curves.items():
    lines += [f"| {name} | {f / 1e12:.1f} | {l:.3f} |" for f, l in pts]
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, "curves.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib is not installed: no curves.png")
    return
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, pts in curves.items():
    ax.plot([f / 1e12 for f, _ in pts], [l for _, l in pts], marker=".", label=name)
  ax.set_xlabel("training TFLOPs")
  ax.set_ylabel("validation loss (nats, mean over domains)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(a.out, "curves.png"), dpi=120)


if __name__ == "__main__":
  main()
