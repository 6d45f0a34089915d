"""Mask choice or weight drift? The 2x2 swap: held-out loss of two runs' masks (a learned
run and a one-shot run, same target) on two sets of weights (the source, and the learned
run's pruning-stage weights), with standard errors over rows, and on each set of weights the
paired difference learned - one-shot (same rows; its standard error is far smaller).

  python -m jshear.experiments.swap --config=configs/demo.py --learned=runs/learned --oneshot=runs/imp
"""

from __future__ import annotations

import json
import sys

from jshear import hostmem

if __name__ == "__main__":
  hostmem.reexec_with_huge_pages()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "The runs' config file.",
                                          lock_config=True)
_LEARNED = flags.DEFINE_string("learned", None, "Workdir of a finished learned-mask run.")
_ONESHOT = flags.DEFINE_string("oneshot", None, "Workdir of a finished one-shot run.")
_ROWS = flags.DEFINE_integer("rows", 64, "Held-out rows per domain.")


def swap(cfg, learned: str, oneshot: str, rows: int) -> dict:
  import jax

  from jshear import sharding as shd
  from jshear.eval.heldout import heldout_losses
  from jshear.train.loop import Context, restore_final_state
  from jshear.train.pipeline import resolve_data
  from jshear.train import stages
  from jshear.train.stages import masks_io
  from jshear.train.stages.choosers import prune_spec
  from jshear.train.stages.common import load_any, resolve_source
  src = load_any(resolve_source(cfg.model.source), cfg)
  data = resolve_data(cfg, src.tokenizer)
  mesh = shd.make_mesh(dict(cfg.mesh.ici), dict(cfg.mesh.dcn))
  out = {}
  with jax.set_mesh(mesh):
    ctx = Context(cfg=cfg, workdir=learned, mesh=mesh, writer=None, data_dir=data)
    drifted = jax.device_get(restore_final_state(ctx, stages.get("prune"), src.cfg,
                                                 prune_spec(cfg, src.cfg))["params"])
    for mname, wd in (("learned masks", learned), ("one-shot masks", oneshot)):
      masks = masks_io.load(wd)
      for wname, params in (("source weights", src.params), ("pruning-stage weights", drifted)):
        out[f"{mname} / {wname}"] = heldout_losses(data, mesh, src.cfg, params, masks, rows)
  return out


def main(argv):
  del argv
  res = swap(_CONFIG.value, _LEARNED.value, _ONESHOT.value, _ROWS.value)
  print("| masks / weights | mean held-out loss | s.e. |")
  print("|---|---|---|")
  for k, v in res.items():
    print(f"| {k} | {v['mean']:.3f} | {v['se']:.3f} |")
  from jshear.eval.heldout import paired_difference
  for w in ("source weights", "pruning-stage weights"):
    d = paired_difference(res[f"learned masks / {w}"], res[f"one-shot masks / {w}"])
    print(f"learned - one-shot masks on {w}: {d['mean']:+.3f} ± {d['se']:.3f} (paired)")
  print(json.dumps(res), file=sys.stderr)
  return 0


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "learned", "oneshot"])
  from jshear.cli import parse_flags
  app.run(main, flags_parser=parse_flags)
