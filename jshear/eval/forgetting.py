"""Learning vs forgetting: what continued pretraining on one domain gained there and lost
elsewhere, and how many directions the weights moved in (Biderman et al. 2024).

  python -m jshear.eval.forgetting --source=SRC --continued=RUN1/continued,RUN2/hf \
      --data=PREPARED --target=github --out=REPORT_DIR [--rows=64]

For each continued model (same tokenizer as the source; any jshear or HF model dir):
  learned    source loss - model loss on the target domain's held-out test rows (> 0: learned)
  forgotten  model loss - source loss, the mean over the other domains (> 0: forgot)
both as paired differences on the same rows with their standard errors
(`jshear.eval.heldout`), and, when it has the source's shape, per weight matrix the rank
that explains 90% of the spectral energy (sum of squared singular values) of
W_after - W_before. A LoRA-merged model's is at most its adapter rank; the paper found full
continued pretraining's 10-100x a typical LoRA rank.
Writes REPORT_DIR/forgetting.json, forgetting.md and forgetting.png (matplotlib).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import numpy as np

from jshear.errors import JShearError

_log = logging.getLogger(__name__)
MATRICES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def energy_rank(delta: np.ndarray, fraction: float = 0.9) -> int:
  """The fewest singular directions holding `fraction` of ||delta||_F^2 (0 for delta = 0)."""
  s2 = np.square(np.linalg.svd(np.asarray(delta, np.float64), compute_uv=False))
  total = s2.sum()
  if total == 0:
    return 0
  return int(np.searchsorted(np.cumsum(s2) / total, fraction - 1e-12) + 1)


def _matrices(cfg, params) -> dict:
  """name -> [L, in, out] of every projection, the parallel family unfused."""
  from jshear.model.params import unfuse_layers
  layers = params["layers"]
  if cfg.family == "parallel":
    layers = unfuse_layers(cfg, {k: np.asarray(v) for k, v in layers.items()}, xp=np)
  out = {}
  for name in MATRICES:
    w = np.asarray(layers[name], np.float32)
    n_in = 2 if name == "wo" else 1
    out[name] = w.reshape(w.shape[0], int(np.prod(w.shape[1:1 + n_in])), -1)
  return out


def delta_ranks(cfg_before, before, cfg_after, after, fraction: float = 0.9) -> dict | None:
  """{matrix: [rank90 per layer]} of after - before; None when the shapes differ."""
  from jshear.model.config import SHAPE_KEYS
  if any(getattr(cfg_before, k) != getattr(cfg_after, k) for k in SHAPE_KEYS):
    return None
  a, b = _matrices(cfg_before, before), _matrices(cfg_after, after)
  return {n: [energy_rank(b[n][i] - a[n][i], fraction) for i in range(a[n].shape[0])]
          for n in MATRICES}


def _side(res_a, res_b, domains) -> dict:
  """{"mean", "se"} of a - b over `domains` (paired by row)."""
  from jshear.eval.heldout import paired_difference
  pick = lambda r: {"domains": {d: r["domains"][d] for d in domains}}
  return paired_difference(pick(res_a), pick(res_b))


def report(source: str, continued: list[str], data_dir: str, target: str, rows: int = 64,
           fraction: float = 0.9) -> dict:
  """The report as a dict (what `main` writes)."""
  import jax

  from jshear import sharding as shd
  from jshear.convert.hf_import import read_model
  from jshear.data.mixture import domain_sources
  from jshear.eval.heldout import heldout_losses
  domains = sorted(domain_sources(data_dir, "test"))
  if target not in domains:
    raise JShearError(f"--target={target!r} is not a domain of {data_dir} (it has {domains})")
  others = [d for d in domains if d != target]
  if not others:
    raise JShearError(f"{data_dir} has only the target domain: nothing to forget")
  mesh = shd.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})

  def score(path):
    cfg, params = read_model(path)
    with jax.set_mesh(mesh):
      return cfg, params, heldout_losses(data_dir, mesh, cfg.replace(remat="none"), params,
                                         rows=rows)

  src_cfg, src_params, src = score(source)
  out = {"source": {"dir": os.path.abspath(source), "losses": _losses(src)},
         "target": target, "others": others, "rows": rows, "fraction": fraction,
         "models": {}}
  for path in continued:
    cfg, params, res = score(path)
    learned = _side(src, res, [target])
    forgotten = _side(res, src, others)
    ranks = delta_ranks(src_cfg, src_params, cfg, params, fraction)
    out["models"][path] = {
        "dir": os.path.abspath(path), "losses": _losses(res), "learned": learned,
        "forgotten": forgotten, "delta_rank90": ranks,
        "delta_rank90_median": ({n: float(np.median(v)) for n, v in ranks.items()}
                                if ranks else None),
        "matrix_min_dim": ({n: int(min(m.shape[1:])) for n, m in
                            _matrices(src_cfg, src_params).items()} if ranks else None)}
  return out


def _losses(res) -> dict:
  return {d: {"loss": v["loss"], "se": v["se"], "rows": v["rows"]}
          for d, v in res["domains"].items()}


def to_markdown(rep: dict) -> str:
  t = rep["target"]
  lines = ["# Learning vs forgetting", "",
           f"Target domain: {t}; forgetting: the mean over {', '.join(rep['others'])}. "
           f"Held-out test rows (up to {rep['rows']} a domain), paired with the source's. "
           "Learned > 0: lower target loss than the source; forgotten > 0: higher loss "
           "elsewhere.", "",
           "| model | target loss | learned ± s.e. | other-domain loss | forgotten ± s.e. | "
           "median rank90 of dW (q k v o gate up down) |", "|---|---:|---:|---:|---:|---|"]
  src = rep["source"]["losses"]
  mean_other = lambda ls: float(np.mean([ls[d]["loss"] for d in rep["others"]]))
  lines.append(f"| source | {src[t]['loss']:.3f} | - | {mean_other(src):.3f} | - | - |")
  for name, m in rep["models"].items():
    med = m["delta_rank90_median"]
    ranks = " ".join(f"{med[n]:g}" for n in MATRICES) if med else "(other shape)"
    lines.append(f"| {name} | {m['losses'][t]['loss']:.3f} | {m['learned']['mean']:+.3f} ± "
                 f"{m['learned']['se']:.3f} | {mean_other(m['losses']):.3f} | "
                 f"{m['forgotten']['mean']:+.3f} ± {m['forgotten']['se']:.3f} | {ranks} |")
  lines += ["", f"rank90: the fewest singular directions holding {rep['fraction']:.0%} of the "
            "squared Frobenius norm of W_after - W_before, per layer; the median over layers.",
            ""]
  return "\n".join(lines)


def plot(rep: dict, path: str) -> bool:
  """Learned vs forgotten (with s.e. bars) and the per-matrix median rank90; False without
  matplotlib."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    _log.warning("matplotlib is not installed: skipping %s", path)
    return False
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
  for name, m in rep["models"].items():
    label = os.path.basename(os.path.dirname(m["dir"])) or name
    ax.errorbar(m["forgotten"]["mean"], m["learned"]["mean"], xerr=m["forgotten"]["se"],
                yerr=m["learned"]["se"], fmt="o", capsize=3, label=label)
  ax.axhline(0, color="k", linewidth=0.5)
  ax.axvline(0, color="k", linewidth=0.5)
  ax.set_xlabel("forgotten: other-domain loss increase (nats)")
  ax.set_ylabel(f"learned: {rep['target']} loss decrease (nats)")
  ax.legend(fontsize=8)
  ranked = [(n, m) for n, m in rep["models"].items() if m["delta_rank90_median"]]
  width = 0.8 / max(len(ranked), 1)
  for j, (name, m) in enumerate(ranked):
    label = os.path.basename(os.path.dirname(m["dir"])) or name
    bx.bar([i + (j - (len(ranked) - 1) / 2) * width for i in range(len(MATRICES))],
           [m["delta_rank90_median"][n] for n in MATRICES], width, label=label)
  bx.set_xticks(range(len(MATRICES)), MATRICES)
  bx.set_ylabel(f"median rank for {rep['fraction']:.0%} of dW energy")
  if ranked:
    bx.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jshear.eval.forgetting", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--source", required=True, help="the model before continued pretraining")
  p.add_argument("--continued", required=True, action="append",
                 help="continued model dir(s), comma-separated or repeated")
  p.add_argument("--data", required=True, help="a prepared dataset (its test split)")
  p.add_argument("--target", required=True, help="the domain continued pretraining used")
  p.add_argument("--out", required=True, help="report directory")
  p.add_argument("--rows", type=int, default=64)
  p.add_argument("--fraction", type=float, default=0.9)
  a = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  models = [m for item in a.continued for m in item.split(",") if m]
  try:
    for path in [a.source, *models, a.data]:
      if not os.path.isdir(path):
        raise JShearError(f"{path} is not a directory")
    if not 0 < a.fraction <= 1:
      raise JShearError(f"--fraction={a.fraction} must be in (0, 1]")
    rep = report(a.source, models, a.data, a.target, a.rows, a.fraction)
  except JShearError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, "forgetting.json"), "w") as f:
    json.dump(rep, f, indent=2)
  md = to_markdown(rep)
  with open(os.path.join(a.out, "forgetting.md"), "w") as f:
    f.write(md)
  rep["plot"] = plot(rep, os.path.join(a.out, "forgetting.png"))
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main())
