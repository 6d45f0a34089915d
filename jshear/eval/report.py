"""Run report: PNG plots and report.md from a workdir.

  python -m jshear.eval.report WORKDIR [--out DIR]     (default DIR = WORKDIR/report)

Reads (each optional; whatever is missing is said in the report, not an error):
  WORKDIR/metrics.jsonl        one JSON record per line: stage, step, lm_loss, loss,
                               lagrangian, prune/<group>/{expected_size,target_size,lambda1,
                               lambda2,flips}, eval/<domain>/loss, data/weight/<domain>, ...
  WORKDIR/masks/binary_masks.npz or masks.npz   final masks by group: layer [L], head [L, H],
                               kv [L, KV], intermediate [L, I], hidden [D] (non-zero = kept)
  WORKDIR/eval/*.json          zero-shot results (lm-eval layout, `python -m jshear.eval tasks
                               --out`) and perplexity results (`python -m jshear.eval ppl --out`)
Writes loss.png, domain_weights.png, prune_sizes.png, masks.png, zeroshot.png (those with
data) and report.md, which embeds them.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from collections import OrderedDict

import numpy as np

from jshear.errors import JShearError
from jshear.metrics import read_metrics


# ---- reading ------------------------------------------------------------------------------

def global_steps(recs: list[dict]) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
  """x position of every record: stages in order of first appearance, each stage's steps
  offset by the previous stages' last step (steps restart per stage). Returns x and
  [(stage, x_start, x_end)]."""
  order = list(OrderedDict.fromkeys(r["stage"] for r in recs))
  last = {s: max(r["step"] for r in recs if r["stage"] == s) for s in order}
  first = {s: min(r["step"] for r in recs if r["stage"] == s) for s in order}
  offset, acc = {}, 0.0
  for s in order:
    # a stage whose steps already continue the previous count keeps them as they are
    offset[s] = 0.0 if first[s] >= acc else acc
    acc = offset[s] + last[s]
  x = np.array([offset[r["stage"]] + r["step"] for r in recs], float)
  spans = [(s, offset[s] + first[s], offset[s] + last[s]) for s in order]
  return x, spans


def _series(recs, x, key):
  pts = [(xi, r[key]) for xi, r in zip(x, recs)
         if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
  if not pts:
    return None, None
  a = np.array(pts)
  return a[:, 0], a[:, 1]


def _keys(recs, prefix, suffix=""):
  out = OrderedDict()
  for r in recs:
    for k in r:
      if k.startswith(prefix) and k.endswith(suffix):
        out[k] = None
  return list(out)


def read_masks(workdir: str):
  for name in ("binary_masks.npz", "masks.npz"):
    p = os.path.join(workdir, "masks", name)
    if os.path.exists(p):
      with np.load(p) as z:
        return {k: np.asarray(z[k]) for k in z.files}, p
  return None, None


def read_evals(workdir: str):
  """(zero-shot results [(label, json)], perplexity results [(label, json)]), oldest first."""
  zs, pp = [], []
  files = sorted(glob.glob(os.path.join(workdir, "eval", "*.json")), key=lambda p: (os.path.getmtime(p), p))
  for p in files:
    try:
      with open(p) as f:
        d = json.load(f)
    except (OSError, json.JSONDecodeError):
      continue
    label = os.path.splitext(os.path.basename(p))[0]
    if isinstance(d.get("results"), dict):
      zs.append((label, d))
    elif isinstance(d.get("domains"), dict):
      pp.append((label, d))
  return zs, pp


# ---- plotting -----------------------------------------------------------------------------

def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _stage_marks(ax, spans):
  """Dotted line where a stage ends and the next begins; stage names along the top."""
  if len(spans) < 2:
    return
  for i, (s, a, b) in enumerate(spans):
    if i:
      ax.axvline(spans[i - 1][2], color="0.4", ls=":", lw=1)
    ax.text((a + b) / 2, 0.97, s, transform=ax.get_xaxis_transform(), ha="center", va="top",
            fontsize=8, color="0.25", style="italic",
            bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.7))


def plot_losses(recs, x, spans, path):
  train = [k for k in ("lm_loss", "loss") if _series(recs, x, k)[0] is not None]
  evals = _keys(recs, "eval/", "/loss")
  if not train and not evals:
    return False
  plt = _plt()
  n = 1 + bool(evals)
  fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4.2), squeeze=False)
  ax = axes[0, 0]
  for k in train:
    xs, ys = _series(recs, x, k)
    ax.plot(xs, ys, label={"lm_loss": "LM loss", "loss": "total loss (LM + Lagrangian)"}[k], lw=1.2)
  ax.set(title="Training loss", xlabel="step (all stages)", ylabel="loss (nats / token)")
  ax.grid(alpha=0.3)
  if train:
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1, 0.9))
  _stage_marks(ax, spans)
  if evals:
    ax = axes[0, 1]
    for k in evals:
      xs, ys = _series(recs, x, k)
      if xs is not None:
        ax.plot(xs, ys, marker="o", ms=3, lw=1.2, label=k.split("/")[1])
    ax.set(title="Held-out loss per domain", xlabel="step (all stages)", ylabel="loss (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="upper right", bbox_to_anchor=(1, 0.9))
    _stage_marks(ax, spans)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def plot_weights(recs, x, spans, path):
  keys = _keys(recs, "data/weight/")
  if not keys:
    return False
  plt = _plt()
  fig, ax = plt.subplots(figsize=(7.5, 4.2))
  for k in keys:
    xs, ys = _series(recs, x, k)
    if xs is not None:
      ax.plot(xs, ys, lw=1.4, label=k.split("/", 2)[2], drawstyle="steps-post")
  ax.set(title="Data mixture: domain sampling weights", xlabel="step (all stages)",
         ylabel="weight (fraction of batch)")
  ax.set_ylim(bottom=0)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, ncol=2)
  _stage_marks(ax, spans)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def prune_groups(recs):
  return list(OrderedDict.fromkeys(k.split("/")[1] for k in _keys(recs, "prune/", "/expected_size")))


def plot_prune(recs, x, spans, path):
  groups = prune_groups(recs)
  if not groups:
    return False
  plt = _plt()
  n = len(groups) + 1
  cols = min(3, n)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
  for i, g in enumerate(groups):
    ax = axes[i // cols, i % cols]
    for k, style, label in ((f"prune/{g}/expected_size", "-", "expected (from masks)"),
                            (f"prune/{g}/target_size", "--", "target (warmed up)")):
      xs, ys = _series(recs, x, k)
      if xs is not None:
        ax.plot(xs, ys, style, lw=1.4, label=label)
    ax.set(title=f"mask group '{g}'", xlabel="step", ylabel="kept units (count)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  ax = axes[(n - 1) // cols, (n - 1) % cols]
  any_l = False
  for g in groups:
    for lam, style in (("lambda1", "-"), ("lambda2", "--")):
      xs, ys = _series(recs, x, f"prune/{g}/{lam}")
      if xs is not None:
        ax.plot(xs, ys, style, lw=1.2, label=f"{g} {lam}")
        any_l = True
  ax.set(title="Lagrange multipliers (mean per group)", xlabel="step", ylabel="lambda (unitless)")
  ax.grid(alpha=0.3)
  if any_l:
    ax.legend(fontsize=7, ncol=2)
  for j in range(n, rows * cols):
    axes[j // cols, j % cols].axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def plot_masks(masks, path):
  """Layer-aligned panels: layers kept, heads per layer, intermediate units per layer,
  hidden dims. A pruned layer's heads/units show grey (gone with the layer)."""
  if not masks:
    return False
  plt = _plt()
  from matplotlib.colors import ListedColormap
  cmap = ListedColormap(["#f7f7f7", "#bdbdbd", "#238b45"])   # pruned, layer gone, kept
  kept = {k: (np.asarray(v) != 0) for k, v in masks.items()}
  layer = kept.get("layer")
  order = [k for k in ("layer", "head", "kv", "intermediate", "hidden") if k in kept]
  order += [k for k in kept if k not in order]
  widths = [0.5 if k == "layer" else 1.6 if k == "hidden" else 1.2 for k in order]
  fig, axes = plt.subplots(1, len(order), figsize=(3.4 * sum(widths) + 1, 5.0), squeeze=False,
                           gridspec_kw={"width_ratios": widths})
  for ax, k in zip(axes[0], order):
    m = kept[k]
    if m.ndim == 1 and k == "layer":
      ax.imshow(np.where(m, 2, 0)[:, None], cmap=cmap, vmin=0, vmax=2, aspect="auto",
                interpolation="nearest")
      ax.set_xticks([])
      ax.set(title=f"layers\n{int(m.sum())}/{m.size} kept", ylabel="layer")
    elif m.ndim == 2 and m.shape[1] <= 64:
      img = np.where(m, 2, 0)
      if layer is not None and layer.shape[0] == m.shape[0]:
        img = np.where(layer[:, None], img, 1)
      ax.imshow(img, cmap=cmap, vmin=0, vmax=2, aspect="auto", interpolation="nearest")
      eff = int((img == 2).sum())
      ax.set(title=f"{k} per layer\n{eff}/{m.size} kept", xlabel=f"{k} index", ylabel="layer")
      ax.set_xlim(-0.5, m.shape[1] + 0.9)
      for l in range(m.shape[0]):
        ax.text(m.shape[1] - 0.3, l, str(int((img[l] == 2).sum())), va="center", fontsize=7)
    elif m.ndim == 2:
      cnt = m.sum(axis=1).astype(float)
      gone = np.zeros_like(cnt, bool) if layer is None or layer.shape[0] != m.shape[0] else ~layer
      ax.barh(np.arange(m.shape[0]), np.where(gone, 0, cnt), color="#238b45", label="kept")
      ax.barh(np.arange(m.shape[0]), np.where(gone, cnt, 0), color="#bdbdbd", label="layer pruned")
      ax.set_xlim(0, m.shape[1])
      ax.set_ylim(m.shape[0] - 0.5, -0.5)
      ax.set(title=f"{k} units per layer\n{int(cnt[~gone].sum())}/{m.size} kept",
             xlabel=f"kept units (of {m.shape[1]})", ylabel="layer")
      if gone.any():
        ax.legend(fontsize=7, loc="lower right")
    else:
      ax.imshow(np.where(m, 2, 0).reshape(1, -1), cmap=cmap, vmin=0, vmax=2, aspect="auto",
                interpolation="nearest")
      ax.set_yticks([])
      ax.set(title=f"{k}\n{int(m.sum())}/{m.size} kept", xlabel=f"{k} dimension")
  fig.suptitle("Surviving structure (green = kept, white = pruned, grey = its layer is pruned)",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def _primary(task, res):
  from jshear.eval.tasks import PRIMARY_METRIC
  pm = PRIMARY_METRIC.get(task, "acc")
  for m in (pm, "acc", "acc_norm"):
    v = res.get(f"{m},none")
    if isinstance(v, (int, float)):
      return m, float(v), res.get(f"{m}_stderr,none")
  return None, None, None


def zeroshot_table(zs):
  """Rows: (task, metric, [value or None per eval file]) plus an average row."""
  tasks = list(OrderedDict.fromkeys(t for _, d in zs for t in d["results"]))
  rows = []
  for t in tasks:
    metric, vals = None, []
    for _, d in zs:
      m, v, _ = _primary(t, d["results"].get(t, {}))
      metric = metric or m
      vals.append(v)
    rows.append((t, metric, vals))
  return rows


def plot_zeroshot(zs, path):
  rows = [r for r in zeroshot_table(zs) if r[1] is not None]
  if not rows:
    return False
  plt = _plt()
  fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows) + 2), 4.2))
  w = 0.8 / len(zs)
  for j, (label, _) in enumerate(zs):
    vals = [100 * (r[2][j] if r[2][j] is not None else np.nan) for r in rows]
    ax.bar(np.arange(len(rows)) + (j - (len(zs) - 1) / 2) * w, vals, w, label=label)
  ax.set_xticks(np.arange(len(rows)), [f"{t}\n({m})" for t, m, _ in rows], fontsize=8)
  ax.set(title="Zero-shot accuracy", ylabel="accuracy (%)")
  ax.set_ylim(0, 100)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


# ---- report.md ----------------------------------------------------------------------------

def _fmt(v, nd=4):
  return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"


def write_report(workdir: str, out_dir: str | None = None) -> dict:
  if not os.path.isdir(workdir):
    raise JShearError(f"{workdir}: no such workdir")
  out_dir = out_dir or os.path.join(workdir, "report")
  os.makedirs(out_dir, exist_ok=True)
  warns = []
  recs = read_metrics(workdir, warns)
  x, spans = global_steps(recs) if recs else (np.zeros(0), [])
  masks, mask_path = read_masks(workdir)
  zs, pp = read_evals(workdir)
  made = {}
  for name, ok in (("loss.png", recs and plot_losses(recs, x, spans, os.path.join(out_dir, "loss.png"))),
                   ("domain_weights.png", recs and plot_weights(recs, x, spans, os.path.join(out_dir, "domain_weights.png"))),
                   ("prune_sizes.png", recs and plot_prune(recs, x, spans, os.path.join(out_dir, "prune_sizes.png"))),
                   ("masks.png", plot_masks(masks, os.path.join(out_dir, "masks.png"))),
                   ("zeroshot.png", zs and plot_zeroshot(zs, os.path.join(out_dir, "zeroshot.png")))):
    if ok:
      made[name] = os.path.join(out_dir, name)
  md = [f"# Run report: `{os.path.abspath(workdir)}`", ""]
  # stages
  if recs:
    md += ["## Stages", "", "|stage|records|steps|final LM loss|", "|---|---:|---|---:|"]
    for s, a, b in spans:
      rs = [r for r in recs if r["stage"] == s]
      lm = [r["lm_loss"] for r in rs if isinstance(r.get("lm_loss"), (int, float))]
      md.append(f"|{s}|{len(rs)}|{min(r['step'] for r in rs)}-{max(r['step'] for r in rs)}|"
                f"{_fmt(lm[-1] if lm else None)}|")
    md.append("")
  if "loss.png" in made:
    md += ["## Loss", "", "![loss](loss.png)", ""]
    ev = _keys(recs, "eval/", "/loss")
    if ev:
      md += ["|domain|first eval loss|last eval loss|", "|---|---:|---:|"]
      for k in ev:
        _, ys = _series(recs, x, k)
        if ys is not None:
          md.append(f"|{k.split('/')[1]}|{_fmt(ys[0])}|{_fmt(ys[-1])}|")
      md.append("")
  if "domain_weights.png" in made:
    md += ["## Domain weights", "", "![domain weights](domain_weights.png)", ""]
    last = {}
    for r in recs:
      for k in _keys([r], "data/weight/"):
        last[k.split("/", 2)[2]] = r[k]
    md += ["|domain|final weight|", "|---|---:|"] + [f"|{d}|{_fmt(w, 4)}|" for d, w in last.items()] + [""]
  if "prune_sizes.png" in made:
    md += ["## Pruning: expected size vs target", "", "![prune sizes](prune_sizes.png)", "",
           "|group|final expected|final target|lambda1|lambda2|units flipped|",
           "|---|---:|---:|---:|---:|---:|"]
    for g in prune_groups(recs):
      vals = []
      for k in ("expected_size", "target_size", "lambda1", "lambda2"):
        _, ys = _series(recs, x, f"prune/{g}/{k}")
        vals.append(None if ys is None else float(ys[-1]))
      # Side changes of the deterministic masks, summed over the logs: do the gates choose?
      _, flips = _series(recs, x, f"prune/{g}/flips")
      flipped = "-" if flips is None else str(int(np.sum(flips)))
      md.append(f"|{g}|{_fmt(vals[0], 1)}|{_fmt(vals[1], 1)}|{_fmt(vals[2])}|{_fmt(vals[3])}"
                f"|{flipped}|")
    md.append("")
  if "masks.png" in made:
    md += ["## Surviving structure", "", f"From `{os.path.relpath(mask_path, workdir)}`.", "",
           "![masks](masks.png)", "", "|group|shape|kept|per layer|", "|---|---|---:|---|"]
    for k, v in masks.items():
      m = np.asarray(v) != 0
      per = ", ".join(str(int(c)) for c in m.sum(axis=1)) if m.ndim == 2 else ""
      md.append(f"|{k}|{list(m.shape)}|{int(m.sum())}/{m.size}|{per}|")
    md.append("")
  if zs:
    labels = [l for l, _ in zs]
    md += ["## Zero-shot", "", "Primary metric per task (acc_norm = length-normalised), in %; "
           "columns are `eval/*.json`, oldest first.", "",
           "|task|metric|" + "|".join(labels) + "|", "|---|---|" + "---:|" * len(labels)]
    rows = zeroshot_table(zs)
    for t, m, vals in rows:
      md.append(f"|{t}|{m or '-'}|" + "|".join("-" if v is None else f"{100 * v:.1f}" for v in vals) + "|")
    complete = [r for r in rows if r[1] is not None and all(v is not None for v in r[2])
                and r[0] != "lambada"]
    if complete:
      avg = [100 * np.mean([r[2][j] for r in complete]) for j in range(len(zs))]
      md.append(f"|**average** ({len(complete)} tasks)|-|" + "|".join(f"{a:.1f}" for a in avg) + "|")
    lim = [str(d.get("config", {}).get("limit")) for _, d in zs]
    md += ["", f"Documents per task (limit): {', '.join(f'{l}: {v}' for l, v in zip(labels, lim))}.", ""]
    if "zeroshot.png" in made:
      md += ["![zero-shot](zeroshot.png)", ""]
  if pp:
    md += ["## Perplexity", "", "|file|domain|tokens|loss (nats/token)|ppl|bits/byte|", "|---|---|---:|---:|---:|---:|"]
    for label, d in pp:
      for dom, r in d["domains"].items():
        md.append(f"|{label}|{dom}|{r.get('tokens', '-')}|{_fmt(r.get('loss'))}|"
                  f"{_fmt(r.get('ppl'), 3)}|{_fmt(r.get('bpb'))}|")
    md.append("")
  missing = []
  if not recs:
    missing.append("training metrics (metrics.jsonl)")
  if masks is None:
    missing.append("masks (masks/masks.npz)")
  if not zs and not pp:
    missing.append("evaluation results (eval/*.json)")
  if missing or warns:
    md += ["## Notes", ""] + [f"- not found: {m}" for m in missing] + [f"- {w}" for w in warns] + [""]
  report = os.path.join(out_dir, "report.md")
  with open(report, "w") as f:
    f.write("\n".join(md))
  made["report.md"] = report
  return made


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m jshear.eval.report", description=__doc__.split("\n")[0])
  ap.add_argument("workdir")
  ap.add_argument("--out", default=None, help="output dir (default WORKDIR/report)")
  args = ap.parse_args(argv)
  try:
    made = write_report(args.workdir, args.out)
  except JShearError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for name, p in made.items():
    print(p)
  return 0


if __name__ == "__main__":
  sys.exit(main())
