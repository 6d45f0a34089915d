"""Held-out loss of finished runs, each against a baseline run on the same rows.

For runs that `python -m jshear.compare` did not make (a staged run, a control experiment):
every model is scored like a comparison's rows (`jshear.eval.heldout`, cached in each run's
heldout.json) and its paired difference from the baseline printed.

  python -m jshear.paired --config=configs/compare_demo.py \
      --baseline=runs/compare_p120/importance --runs=runs/a,runs/b
"""

from __future__ import annotations

import os

from jshear import hostmem


def paired(cfg, baseline: str, runs: list[str], rows: int) -> dict:
  """{run: {"mean", "se", "paired": {"mean", "se"}}} with the baseline's own row."""
  from jshear.compare import final_model_dir, heldout
  from jshear.eval.heldout import paired_difference
  dirs = {r: final_model_dir(r) for r in [baseline, *runs]}  # all refused before scoring
  scores = {r: heldout(cfg, d, os.path.join(r, "heldout.json"), rows) for r, d in dirs.items()}
  base = scores[baseline]
  return {r: {"mean": s["mean"], "se": s["se"],
              "paired": None if r == baseline else paired_difference(s, base)}
          for r, s in scores.items()}


def main(argv):
  del argv
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
  # Flags only when run as a program: importing `paired` next to `jshear.swap` (which also
  # defines --config) must not clash.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config whose data the runs used.",
                                            lock_config=True)
  _BASELINE = flags.DEFINE_string("baseline", None, "Workdir of the baseline run.")
  _RUNS = flags.DEFINE_list("runs", [], "Workdirs to score against the baseline.")
  _ROWS = flags.DEFINE_integer("rows", 64, "Held-out rows per domain.")
  flags.mark_flags_as_required(["config", "baseline"])
  from jshear.cli import parse_flags
  app.run(main, flags_parser=parse_flags)
