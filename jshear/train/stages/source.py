"""The unpruned source of a run: recorded in every pruned model dir (origin.json) so that a
later `continue` distils from it and measures reference losses on it, never on itself."""

from __future__ import annotations

import logging
import os

from jshear import model_io
from jshear.errors import JShearError
from jshear.train.stages.common import Model, load_any, resolve_source

_log = logging.getLogger(__name__)


def origin_of(path: str, model: Model, workdir: str | None = None) -> dict:
  """What a model pruned from `model` (loaded from `path`) records about its source."""
  out = {"source": os.path.abspath(path),
         "fingerprint": model_io.params_fingerprint(model.params)}
  if workdir:
    out["masks"] = os.path.join(os.path.abspath(workdir), "masks", "binary_masks.npz")
  return out


def unpruned_source(ctx, model: Model, why: list[str]) -> Model:
  """ctx.source, or the source `model` records (config.model.source overrides it when the
  run starts from init_from). Refuses when it cannot be found or has changed."""
  if ctx.source is not None:
    return ctx.source
  cfg, origin = ctx.cfg, model.origin or {}
  path = resolve_source(cfg.model.source) if cfg.init_from and cfg.model.source else None
  recorded = path is None
  path = path or origin.get("source")
  need = "; ".join(why)
  if not path or not os.path.isdir(path):
    where = f"the recorded source {path!r} is gone" if path else "no source is recorded"
    raise JShearError(f"{need} need(s) the unpruned source model, but {where}: set "
                      "config.model.source to the source model dir, or set the keys named")
  src = load_any(path, cfg)
  changed = (recorded and origin.get("fingerprint") and
             model_io.params_fingerprint(src.params) != origin["fingerprint"])
  if changed:
    raise JShearError(f"the source recorded for this model, {path}, has changed since pruning "
                      "(content hash differs): set config.model.source to the model it was "
                      "pruned from")
  _log.info("unpruned source for %s: %s", need, path)
  ctx.source = src
  return src
