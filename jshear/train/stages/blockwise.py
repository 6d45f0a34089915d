"""blockwise: blockwise local distillation (Puzzle's BLD) of the pruned model, between
finalize and continue -> WORKDIR/stitched/ (the pruned model with its trained blocks).

The unpruned source's residual streams at the boundaries of the pruned model's blocks are
recorded for `blockwise.rows_per_domain` training rows a domain (WORKDIR/blockwise_rec/,
resumable), every block is trained on its own to map its span's input stream to its output
(`jshear.train.blocks`, all blocks in one vmapped step), and the trained blocks are put
back into the pruned model. Embeddings, final norm and head stay as finalize left them.
A kill during recording resumes at the last complete chunk, one during block training at
the last checkpoint (WORKDIR/blockwise/checkpoints, every `blockwise.ckpt_every` steps),
to the bits of an uninterrupted run.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from jshear import blockwise as bw
from jshear.config_base import blockwise_block
from jshear.data.mixture import domain_sources
from jshear.data.shards import positions_from_segments
from jshear.errors import JShearError
from jshear.prune.finalize import kept_indices
from jshear.train.blocks import train_blocks
from jshear.train.stages import masks_io
from jshear.train.stages import source as source_mod
from jshear.train.stages.base import Stage
from jshear.train.stages.common import Model, save_dir, write_json_atomic


def calibration_rows(data_dir: str, rows_per_domain: int, seed: int) -> dict:
  """{tokens, segment_ids, positions} [N, T]: a seeded sample of every domain's training
  rows (domains in name order; fewer rows where a domain has fewer)."""
  rng = np.random.default_rng(seed)
  picked = []
  for d, src in sorted(domain_sources(data_dir, "train").items()):
    n = min(len(src), rows_per_domain)
    idx = np.sort(rng.choice(len(src), n, replace=False))
    picked += [np.asarray(src[int(i)]) for i in idx]
  if not picked:
    raise JShearError(f"blockwise: {data_dir} has no training rows to record")
  data = np.stack(picked)
  seg = np.ascontiguousarray(data[:, 1])
  return {"tokens": np.ascontiguousarray(data[:, 0]), "segment_ids": seg,
          "positions": positions_from_segments(seg)}


def _masks(ctx, model: Model) -> dict:
  """The masks finalize folded in: this run's, or those the pruned model's origin names."""
  masks = masks_io.load(ctx.workdir)
  if masks is None and model.origin and model.origin.get("masks"):
    masks = masks_io.load(os.path.dirname(os.path.dirname(model.origin["masks"])))
  if masks is None:
    raise JShearError("stage blockwise needs the masks finalize folded in "
                      f"({os.path.join(ctx.workdir, 'masks', 'masks.npz')}, or those the "
                      "pruned model's origin.json names): run it after prune and finalize")
  return masks


def run(ctx, model: Model) -> Model:
  cfg, stage = ctx.cfg, ctx.stage or STAGE
  block = cfg[stage.block]
  src = source_mod.unpruned_source(ctx, model, ["the blockwise stage's teacher streams"])
  masks = _masks(ctx, model)
  keep = kept_indices(src.cfg, masks)
  spans = bw.spans(src.cfg.num_layers, keep["layers"])
  if len(spans) != model.cfg.num_layers:
    raise JShearError(f"blockwise: the masks keep {len(spans)} layers, the pruned model has "
                      f"{model.cfg.num_layers}")
  hidden = keep.get("hidden")
  scale = None if hidden is None else np.asarray(masks["hidden"])[hidden]
  rows = calibration_rows(ctx.data_dir, block.rows_per_domain, stage.seed(cfg))
  rec_dir = os.path.join(ctx.workdir, f"{stage.name}_rec")
  bw.record(src.cfg, src.params, rows, spans, rec_dir, hidden_keep=hidden, hidden_scale=scale,
            batch_size=block.record_batch_size)
  rec = bw.Recording(rec_dir)
  trained = train_blocks(model.cfg, model.params["layers"], rec, block, steps=block.steps,
                         batch_size=min(block.batch_size, len(rows["tokens"])),
                         seed=stage.seed(cfg), mode=block.mode, eps=block.nmse_eps,
                         ckpt_dir=os.path.join(ctx.workdir, stage.name, "checkpoints"),
                         ckpt_every=block.ckpt_every)
  history = trained.history
  params = {**model.params, "layers": jax.device_get(trained.layers)}
  out = Model(model.cfg, params, model.tokenizer, model.origin)
  save_dir(os.path.join(ctx.workdir, stage.output), out, params, model.origin)
  write_json_atomic(os.path.join(ctx.workdir, stage.output, "blockwise.json"), {
      "spans": [list(s) for s in spans], "rows": int(len(rows["tokens"])),
      "nmse_first": history[0].tolist(), "nmse_last": history[-1].tolist(),
      "devices": jax.device_count(), "resumed_from_step": trained.resumed_from,
      "assignment": bw.device_assignment(len(spans), jax.device_count())})
  ctx.out["blockwise_nmse"] = {"first": float(np.mean(history[0])),
                               "last": float(np.mean(history[-1]))}
  return out


def _validate(cfg, model_cfg, spec):
  if cfg.blockwise.mode == "mlp_only" and model_cfg.family != "llama":
    raise JShearError("config.blockwise.mode='mlp_only' needs the sequential (llama) family: "
                      "the parallel family fuses the MLP's input projection with q, k and v")


STAGE = Stage("blockwise", run, block="blockwise", defaults=blockwise_block, seed_offset=7,
              output="stitched", also_writes=("blockwise_rec",), validate=_validate)
