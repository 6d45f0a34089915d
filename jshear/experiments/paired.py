"""Held-out loss of finished runs, each against a baseline run on the same rows.

For runs that `python -m jshear.experiments.compare` did not make (a staged run, a control experiment):
every model is scored like a comparison's rows (`jshear.eval.heldout`, cached in each run's
heldout.json) and its paired difference from the baseline printed.

  python -m jshear.experiments.paired --config=configs/compare_demo.py \
      --baseline=runs/compare_p120/importance --runs=runs/a,runs/b

Over seeds: `--pairs=RUN:BASELINE,...` takes one (run, baseline) pair per seed, each pair
trained on the same rows (`data.stream=shared`, the same `seed`), and prints every pair's
paired difference and their mean with its standard error between seeds. The paired error
of one pair covers only the held-out rows; the between-seed error also covers the training
rows and gate samples a seed draws.

  python -m jshear.experiments.paired --config=configs/compare_demo.py \
      --pairs=runs/s0/learned:runs/s0/importance,runs/s1/learned:runs/s1/importance
"""

from __future__ import annotations

import os

from jshear import hostmem


def paired(cfg, baseline: str, runs: list[str], rows: int) -> dict:
  """{run: {"mean", "se", "paired": {"mean", "se"}}} with the baseline's own row."""
  from jshear.experiments.compare import final_model_dir, heldout
  from jshear.eval.heldout import paired_difference
  dirs = {r: final_model_dir(r) for r in [baseline, *runs]}  # all refused before scoring
  scores = {r: heldout(cfg, d, os.path.join(r, "heldout.json"), rows) for r, d in dirs.items()}
  base = scores[baseline]
  return {r: {"mean": s["mean"], "se": s["se"],
              "paired": None if r == baseline else paired_difference(s, base)}
          for r, s in scores.items()}


def over_seeds(cfg, pairs: list[tuple[str, str]], rows: int) -> dict:
  """{"pairs": [{"run", "baseline", "mean", "se"}], "mean", "se_between", "n"}: each
  (run, baseline) pair's paired difference, and their mean with the standard error between
  pairs (None for a single pair)."""
  import numpy as np

  from jshear.experiments.compare import final_model_dir
  if not pairs:
    raise ValueError("over_seeds needs at least one (run, baseline) pair")
  for run, base in pairs:  # every dir refused before any scoring
    final_model_dir(run), final_model_dir(base)
  out = []
  for run, base in pairs:
    d = paired(cfg, base, [run], rows)[run]["paired"]
    out.append({"run": run, "baseline": base, **d})
  diffs = np.array([p["mean"] for p in out])
  se = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else None
  return {"pairs": out, "mean": float(diffs.mean()), "se_between": se, "n": len(diffs)}


def _parse_pairs(items: list[str]) -> list[tuple[str, str]]:
  from jshear.errors import JShearError
  pairs = []
  for item in items:
    run, sep, base = item.partition(":")
    if not sep or not run or not base:
      raise JShearError(f"--pairs: {item!r} is not RUN:BASELINE")
    pairs.append((run, base))
  return pairs


def _main_pairs(items: list[str]) -> int:
  res = over_seeds(_CONFIG.value, _parse_pairs(items), _ROWS.value)
  print("| run | baseline | paired difference ± s.e. (held-out rows) |")
  print("|---|---|---:|")
  for p in res["pairs"]:
    print(f"| {p['run']} | {p['baseline']} | {p['mean']:+.3f} ± {p['se']:.3f} |")
  se = "-" if res["se_between"] is None else f"{res['se_between']:.3f}"
  print(f"\nmean over {res['n']} seeds: {res['mean']:+.3f} ± {se} (s.e. between seeds)")
  return 0


def main(argv):
  """Exit 2 with one line on bad input (a dir without a model, a malformed pair)."""
  del argv
  import sys

  from jshear.errors import JShearError
  try:
    return _main()
  except JShearError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2


def _main() -> int:
  from jshear.errors import JShearError
  if _PAIRS.value and (_BASELINE.value or _RUNS.value):
    raise JShearError("give either --pairs or --baseline/--runs, not both")
  if _PAIRS.value:
    return _main_pairs(_PAIRS.value)
  if not _BASELINE.value:
    raise JShearError("--baseline (with --runs) or --pairs is required")
  res = paired(_CONFIG.value, _BASELINE.value, list(_RUNS.value), _ROWS.value)
  print(f"| run | held-out ± s.e. | vs {_BASELINE.value} (paired) |")
  print("|---|---:|---:|")
  for r, v in res.items():
    p = v["paired"]
    cell = "0" if p is None else f"{p['mean']:+.3f} ± {p['se']:.3f}"
    print(f"| {r} | {v['mean']:.3f} ± {v['se']:.3f} | {cell} |")
  return 0


if __name__ == "__main__":
  hostmem.reexec_with_huge_pages()
  from absl import app, flags
  from ml_collections import config_flags
  # Flags only when run as a program: importing `paired` next to `jshear.experiments.swap` (which also
  # defines --config) must not clash.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config whose data the runs used.",
                                            lock_config=True)
  _BASELINE = flags.DEFINE_string("baseline", None, "Workdir of the baseline run.")
  _RUNS = flags.DEFINE_list("runs", [], "Workdirs to score against the baseline.")
  _PAIRS = flags.DEFINE_list("pairs", [], "RUN:BASELINE workdir pairs, one per seed.")
  _ROWS = flags.DEFINE_integer("rows", 64, "Held-out rows per domain.")
  flags.mark_flags_as_required(["config"])
  from jshear.cli import parse_flags
  app.run(main, flags_parser=parse_flags)
