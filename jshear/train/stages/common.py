"""What every stage shares: the model handed from stage to stage, the run context, and
loading / saving model dirs."""

from __future__ import annotations

import dataclasses
import os

import jax
from jax.experimental import multihost_utils

from jshear import atomic, distributed, model_io
from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.train.loop import Context, PruneSpec


@dataclasses.dataclass
class Model:
  """What a stage takes and returns: config, host params (None before pretraining) and the
  tokenizer dir; `origin` records where an imported model came from (provenance)."""
  cfg: ModelConfig
  params: object | None
  tokenizer: str | None
  origin: dict | None = None


@dataclasses.dataclass
class RunContext(Context):
  """Context plus what the pipeline resolved before the first stage."""
  stages: tuple = ()                 # the Stage of each listing in config.stages, in order
  spec: PruneSpec | None = None      # the pruning target (prune / finalize runs)
  source: Model | None = None        # the unpruned model this run started from
  out: dict = dataclasses.field(default_factory=dict)  # summary entries stages add
  stage: object = None               # the Stage running now (a later listing: `pretrain_2`)


def resolve_source(spec: str) -> str:
  if spec == "smollm2":
    from jshear import assets
    return assets.smollm2_hf_dir()
  if not spec:
    raise JShearError("config.model.source is empty: give an HF dir, a jshear model dir or "
                      "'smollm2' (or set config.init_from)")
  if not os.path.isdir(spec):
    raise JShearError(f"config.model.source {spec!r} is not a directory")
  return spec


def load_any(path: str, cfg) -> Model:
  """A jshear model dir or an HF dir, with the run's attention / remat / scan choices."""
  overrides = dict(attention_impl=cfg.model.attention_impl, remat=cfg.model.remat,
                   scan_layers=cfg.model.scan_layers)
  from jshear.convert.hf_import import read_model
  mcfg, params = read_model(path)
  origin = model_io.load_origin(path) if model_io.is_jshear_dir(path) else None
  return Model(mcfg.replace(**overrides), params, model_io.tokenizer_dir(path), origin)


def gather_params(params):
  """Global (possibly multi-host sharded) arrays -> host numpy on every process."""
  if jax.process_count() == 1:
    return jax.device_get(params)
  return multihost_utils.process_allgather(params, tiled=True)


def save_dir(path: str, model: Model, params, origin: dict | None = None) -> None:
  host = gather_params(params)
  if jax.process_index() == 0:
    model_io.save_model(path, model.cfg.replace(attention_impl="xla", remat="none"), host,
                        tokenizer_dir=model.tokenizer, overwrite=True, origin=origin)
  distributed.barrier(f"save-{os.path.basename(path)}")


def write_json_atomic(path: str, obj) -> None:
  """Process 0 writes `obj` to `path` through a temporary file (no half-written file)."""
  if jax.process_index() == 0:
    atomic.write_json(path, obj, sort_keys=True)


def compute_dtype(cfg):
  from jshear.model.config import compute_dtype as parse
  return parse(cfg.model.compute_dtype)


def eval_domains(data_dir):
  from jshear.data.prepare import load_manifest
  return list(load_manifest(data_dir)["domains"])
