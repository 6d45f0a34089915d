"""A band of a reference model's scores, kept as a view of the prepared dir (Ankner et al. 2024).

  python -m jshear.data select --scores=SCORES --band=low|medium|high --rate=R \\
      [--per_domain] --out=VIEW [--report=DIR]
  python -m jshear.data select --data=PREPARED --band=random --rate=R [--seed=S] \\
      --out=PART --rest=REST        # a random split: the reference model trains on PART

Bands of the sorted scores (ascending NLL): low keeps the lowest, high the highest, medium the
band centred on the median (the quantiles 0.5 - R/2 .. 0.5 + R/2). Exactly k = floor(R * n +
0.5) units are kept (R * n rounded half up) of the n scored units, over all domains together
or, with --per_domain, k_d of the n_d units of each domain. Units sort by (score, domain
name, row, segment id), so ties fall the same way on every run; the band is positions
[0, k), [n - k, n) or [(n - k) // 2, (n - k) // 2 + k) of that order. Units without a score
(no target) are never kept.

Row scores keep their rows. Document scores keep their pieces: the view keeps every row that
holds a kept piece and serves only the kept pieces of it (view.py), so training reads exactly
the kept documents, at the cost of the padding where the others were.

band=random needs no scores: per domain, a seeded random floor(R * n + 0.5) of the training
rows go to PART and the others to REST (same held-out rows in both), so a reference model
trained on PART scores the rows of REST it never saw.

VIEW gets report/ (or --report=DIR): report.md, the per-domain score quantiles and the domain
composition (rows, share) before and after, and scores.png, their plot.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import zlib

import numpy as np

from jshear.atomic import atomic_write
from jshear.data import score as score_mod
from jshear.data import view
from jshear.data.prepare import load_manifest
from jshear.errors import JShearError

BANDS = ("low", "medium", "high")
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def keep_count(rate: float, n: int) -> int:
  """rate * n rounded half up (not Python's round, which rounds half to even)."""
  return min(n, int(math.floor(rate * n + 0.5)))


def band_start(n: int, k: int, band: str) -> int:
  return {"low": 0, "high": n - k, "medium": (n - k) // 2}[band]


def check_args(band: str, rate: float, bands=BANDS) -> None:
  if band not in bands:
    raise JShearError(f"--band: expected one of {', '.join(bands)}, got '{band}'")
  if not (math.isfinite(rate) and 0.0 < rate <= 1.0):
    raise JShearError(f"--rate: expected a fraction in (0, 1], got {rate}")


def choose(arrays: dict, band: str, rate: float, per_domain: bool) -> dict:
  """{domain: boolean mask over its units}: the band of the scored units."""
  names = sorted(arrays)
  groups = [names] if not per_domain else [[d] for d in names]
  keep = {d: np.zeros(len(arrays[d]["score"]), bool) for d in names}
  for group in groups:
    dom = np.concatenate([np.full(len(arrays[d]["score"]), names.index(d)) for d in group])
    idx = np.concatenate([np.arange(len(arrays[d]["score"])) for d in group])
    cols = {k: np.concatenate([arrays[d][k] for d in group]) for k in ("score", "row", "segment")}
    ok = np.isfinite(cols["score"])
    dom, idx = dom[ok], idx[ok]
    order = np.lexsort((cols["segment"][ok], cols["row"][ok], dom, cols["score"][ok]))
    n = len(order)
    k = keep_count(rate, n)
    start = band_start(n, k, band)
    sel = order[start:start + k]
    for d in group:
      keep[d][idx[sel][dom[sel] == names.index(d)]] = True
  return keep


def kept_rows(arrays: dict, keep: dict, unit: str) -> dict:
  """{domain: index arrays of the view}: rows, plus the kept pieces for document units."""
  out = {}
  for d, a in arrays.items():
    m = keep[d]
    if unit == "row":
      out[d] = {"rows": np.sort(a["row"][m])}
      continue
    order = np.lexsort((a["segment"][m], a["row"][m]))
    pr, ps = a["row"][m][order], a["segment"][m][order]
    out[d] = {"rows": np.unique(pr), "piece_rows": pr, "piece_segs": ps}
  return out


# -- the report ---------------------------------------------------------------

def _quantiles(x: np.ndarray) -> list:
  x = x[np.isfinite(x)]
  return [float(np.quantile(x, q)) for q in QUANTILES] if len(x) else [None] * len(QUANTILES)


def summary(arrays: dict, keep: dict, source_rows: dict, kept: dict) -> dict:
  out = {}
  for d in sorted(arrays):
    a, m = arrays[d], keep[d]
    out[d] = {"units": int(len(m)), "scored": int(np.isfinite(a["score"]).sum()),
              "kept_units": int(m.sum()), "rows": int(source_rows[d]),
              "kept_rows": int(len(kept[d]["rows"])),
              "tokens": int(a["tokens"].sum()), "kept_tokens": int(a["tokens"][m].sum()),
              "quantiles": _quantiles(a["score"]), "kept_quantiles": _quantiles(a["score"][m])}
  return out


def _f(v, nd=3) -> str:
  return "-" if v is None else f"{v:.{nd}f}"


def report_markdown(s: dict, title: str) -> str:
  rows = sum(e["rows"] for e in s.values()) or 1
  kept = sum(e["kept_rows"] for e in s.values()) or 1
  qs = " | ".join(f"q{int(q * 100)}" for q in QUANTILES)
  lines = [f"# {title}", "", "## Composition", "",
           "| domain | units | kept units | rows | kept rows | share before | share after | "
           "scored tokens kept |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for d, e in s.items():
    lines.append(f"| {d} | {e['units']} | {e['kept_units']} | {e['rows']} | {e['kept_rows']} | "
                 f"{e['rows'] / rows:.3f} | {e['kept_rows'] / kept:.3f} | "
                 f"{e['kept_tokens'] / max(e['tokens'], 1):.3f} |")
  lines += ["", "## Score quantiles (mean NLL, nats per token)", "",
            f"| domain | units | {qs} |", "|---|---|" + "---:|" * len(QUANTILES)]
  for d, e in s.items():
    for label, key in (("all", "quantiles"), ("kept", "kept_quantiles")):
      lines.append(f"| {d} | {label} | " + " | ".join(_f(v) for v in e[key]) + " |")
  return "\n".join(lines) + "\n"


def plot(arrays: dict, keep: dict, s: dict, path: str, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = sorted(arrays)
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
  pos = np.arange(len(names))
  for i, d in enumerate(names):
    x = arrays[d]["score"]
    ok = np.isfinite(x)
    for j, (vals, color) in enumerate(((x[ok], "0.6"), (x[ok & keep[d]], "C0"))):
      if len(vals):
        ax.boxplot(vals, positions=[i + (j - 0.5) * 0.35], widths=0.3, whis=(0, 100),
                   patch_artist=True, boxprops=dict(facecolor=color), medianprops=dict(color="k"))
  ax.set_xticks(pos, names)
  ax.set(title="Scores per domain (grey: all, blue: kept)", ylabel="mean NLL (nats / token)")
  ax.grid(alpha=0.3)
  rows = np.array([s[d]["rows"] for d in names], float)
  kept = np.array([s[d]["kept_rows"] for d in names], float)
  bx.bar(pos - 0.18, rows / max(rows.sum(), 1), 0.35, color="0.6", label="before")
  bx.bar(pos + 0.18, kept / max(kept.sum(), 1), 0.35, color="C0", label="after")
  bx.set_xticks(pos, names)
  bx.set(title="Domain composition (share of rows)", ylabel="share")
  bx.legend(fontsize=8)
  bx.grid(alpha=0.3)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(out_dir: str, arrays: dict, keep: dict, s: dict, title: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  with atomic_write(os.path.join(out_dir, "report.md")) as f:
    f.write(report_markdown(s, title))
  plot(arrays, keep, s, os.path.join(out_dir, "scores.png"), title)


# -- the commands -------------------------------------------------------------

def _scores_hash(scores_dir: str) -> str:
  with open(os.path.join(scores_dir, "scores.json"), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def _data_of(rec: dict, scores_dir: str) -> str:
  """The dir the scores were computed on, refused if it is not the data they score."""
  d = rec["data"]["path"]
  if not os.path.isfile(os.path.join(d, "manifest.json")):
    raise JShearError(f"--scores={scores_dir}: scores data {d}, which has no manifest.json now")
  got = view.manifest_id(d)
  if got != rec["data"]["manifest"]:
    raise JShearError(f"--scores={scores_dir}: scores {d} as it was (manifest "
                      f"{rec['data']['manifest']}), but it was prepared again since (manifest "
                      f"{got}); score it again")
  return d


def select(scores_dir: str, band: str, rate: float, out: str, per_domain: bool = False,
           report: str | None = None, overwrite: bool = False) -> dict:
  """Writes the view of the band; returns its manifest."""
  check_args(band, rate)
  rec, arrays = score_mod.load_scores(scores_dir)
  if rec["split"] != "train":
    raise JShearError(f"--scores={scores_dir}: scores the '{rec['split']}' split; a view keeps "
                      "training rows, so select needs scores of the train split")
  data = _data_of(rec, scores_dir)
  m = load_manifest(data)
  keep = choose(arrays, band, rate, per_domain)
  n, k = sum(int(np.isfinite(a["score"]).sum()) for a in arrays.values()), sum(
      int(x.sum()) for x in keep.values())
  if k == 0:
    raise JShearError(f"--rate={rate}: keeps floor({rate} * n + 0.5) = 0 of the {n} scored "
                      f"{rec['unit']}s{' in every domain' if per_domain else ''}")
  kept = kept_rows(arrays, keep, rec["unit"])
  s = summary(arrays, keep, {d: e["rows"] for d, e in rec["domains"].items()}, kept)
  record = {"kind": "perplexity", "band": band, "rate": rate, "per_domain": per_domain,
            "unit": rec["unit"], "rounding": "floor(rate * n + 0.5)",
            "units": n, "kept_units": k,
            "scores": {"path": os.path.abspath(scores_dir), "hash": _scores_hash(scores_dir)},
            "model": rec["model"],
            "domains": {d: {x: e[x] for x in ("units", "kept_units", "rows", "kept_rows")}
                        for d, e in s.items()}}
  title = (f"{band} {rate:g} of {rec['unit']} scores{' per domain' if per_domain else ''} "
           f"({os.path.basename(os.path.normpath(rec['model']['path']))})")
  inside = report is None or os.path.abspath(report) == os.path.join(os.path.abspath(out), "report")
  extra = (lambda tmp: write_report(os.path.join(tmp, "report"), arrays, keep, s, title)) if inside else None
  vm = view.write_view(out, data, m, kept, record, overwrite, extra)
  if not inside:
    write_report(report, arrays, keep, s, title)
  return vm


def random_split(data_dir: str, rate: float, out: str, rest: str | None = None, seed: int = 0,
                 overwrite: bool = False) -> dict:
  """Per domain a seeded random keep_count(rate, n) of the train rows -> view `out`, the
  others -> view `rest`. Returns the first view's manifest."""
  check_args("random", rate, ("random",))
  m = load_manifest(data_dir)
  if rest and os.path.abspath(rest) == os.path.abspath(out):
    raise JShearError(f"--rest={rest}: must differ from --out")
  for path in (out, rest):
    if path and os.path.exists(path) and not overwrite:
      raise JShearError(f"output {os.path.abspath(path)} already exists (pass --overwrite to replace it)")
  parts = {}
  for d, e in m["domains"].items():
    n = int(e["train"]["sequences"])
    perm = np.random.default_rng([seed, zlib.crc32(d.encode())]).permutation(n)
    k = keep_count(rate, n)
    parts[d] = (np.sort(perm[:k]), np.sort(perm[k:]))
  rec = {"kind": "random_split", "rate": rate, "seed": seed, "rounding": "floor(rate * n + 0.5)"}
  vm = view.write_view(out, data_dir, m, {d: {"rows": p[0]} for d, p in parts.items()},
                       dict(rec, part="kept"), overwrite)
  if rest:
    view.write_view(rest, data_dir, m, {d: {"rows": p[1]} for d, p in parts.items()},
                    dict(rec, part="rest"), overwrite)
  return vm


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m jshear.data select", description=__doc__.split("\n")[0])
  ap.add_argument("--scores", help="scores dir (python -m jshear.data score)")
  ap.add_argument("--data", help="band=random: the prepared dir (or view) to split")
  ap.add_argument("--band", required=True, help="low, medium, high (of the scores) or random")
  ap.add_argument("--rate", type=float, required=True, help="fraction of units kept, in (0, 1]")
  ap.add_argument("--per_domain", action="store_true", help="the band within each domain")
  ap.add_argument("--out", required=True, help="the view dir to write")
  ap.add_argument("--report", default=None, help="report dir (default: VIEW/report)")
  ap.add_argument("--rest", default=None, help="band=random: a view of the rows not kept")
  ap.add_argument("--seed", type=int, default=0, help="band=random: seed of the split")
  ap.add_argument("--overwrite", action="store_true", help="replace an existing view")
  args = ap.parse_args(argv)
  try:
    check_args(args.band, args.rate, BANDS + ("random",))
    if args.band == "random":
      if not args.data or args.scores:
        raise JShearError("--band=random: expected --data=DIR (it splits rows) and no --scores")
      vm = random_split(args.data, args.rate, args.out, args.rest, args.seed, args.overwrite)
    else:
      if not args.scores or args.data:
        raise JShearError(f"--band={args.band}: expected --scores=DIR (--data is for --band=random)")
      vm = select(args.scores, args.band, args.rate, args.out, args.per_domain, args.report,
                  args.overwrite)
  except JShearError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for d, e in vm["domains"].items():
    t = e["train"]
    print(f"{d}: {t['sequences']:,} of {t['source_sequences']:,} train rows kept")
  return 0


if __name__ == "__main__":
  sys.exit(main())
