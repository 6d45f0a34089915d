"""The stages of a run, in order, each resumable; a finished stage leaves WORKDIR/<stage>/DONE.

  pretrain  random init -> WORKDIR/pretrained/
  prune     a way to choose masks on the source -> WORKDIR/masks/ (+ prune/checkpoints)
  finalize  the masks folded and sliced -> WORKDIR/pruned/ (jshear model dir + origin.json)
  continue  continued pretraining with dynamic batch loading -> WORKDIR/continued/
  export    the latest model -> WORKDIR/hf/ (a plain Hugging Face directory)
  grow      Gstack depth growth -> WORKDIR/grown/

A stage that `repeats` may be listed again (pretrain,grow,pretrain): its second listing is
`pretrain_2` (WORKDIR/pretrain_2/, WORKDIR/pretrained_2/, its own seed and DONE key; block
`pretrain_2` when the config has one, else `pretrain`), trains the model handed to it with
a fresh optimizer and schedule, and continues the first listing's data stream.

The pipeline resolves the starting model, validates everything before it writes anything,
then loops over the stage table (jshear/train/stages/) keeping DONE markers, and writes the
summary. A stage whose config changed since it ran (with --config.overwrite=True) runs again,
and so does every stage after it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil

import jax
import numpy as np

from jshear import distributed, model_io
from jshear import sharding as shd
from jshear.errors import JShearError
from jshear.metrics import MetricsWriter
from jshear.model.config import SHAPE_KEYS, ModelConfig
from jshear.model.params import count_params
from jshear.optim import check_one_schedule
from jshear.prune.targets import target_config
from jshear.train.loop import data_stream
from jshear.train import stages as stage_table
from jshear.train.stages.choosers import PRUNE_METHODS, prune_spec, trains_in_prune  # noqa: F401
from jshear.train.stages.common import (Model, RunContext, load_any, resolve_source,
                                        write_json_atomic)
from jshear.train.stages import source as source_mod

_log = logging.getLogger(__name__)
# Keys that may differ between invocations on one workdir (everything else must match).
_RESUMABLE_KEYS = ("stages", "overwrite", "init_from", "drop_checkpoints")


def parse_stages(text) -> list[str]:
  known = stage_table.names()
  stages = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
  bad = [s for s in stages if s not in known]
  if bad or not stages:
    raise JShearError(f"config.stages: unknown stage(s) {bad} (known: {list(known)})")
  return stages


def with_stage_blocks(cfg):
  """`cfg` with the block of every listed stage that declares defaults but is missing
  (a stage added after the config file was written), and every later listing's own block
  (`pretrain_2`) completed with the keys it lacks from its first listing's."""
  listed = stage_table.occurrences(parse_stages(cfg.stages), cfg)
  missing = [st for st in listed
             if st.block and st.defaults is not None and st.block not in cfg]
  if missing:
    with cfg.unlocked():
      for st in missing:
        cfg[st.block] = st.defaults()
  for st in listed:
    own, base = cfg.get(st.block), cfg.get(st.first.block)
    if st.previous is None or st.block == st.first.block or base is None:
      continue
    with own.unlocked():
      for k in base:
        if k not in own:
          own[k] = copy.deepcopy(base[k])
  return cfg


# ---- data ---------------------------------------------------------------------------

def resolve_data(cfg, tokenizer_dir: str | None) -> str:
  from jshear.data.prepare import load_manifest, prepare
  if cfg.data.path:
    path = cfg.data.path
  elif cfg.data.corpus == "local":
    from jshear import assets
    root = assets.corpus_dir()
    if not tokenizer_dir:
      raise JShearError("config.data.corpus='local' needs a model with a tokenizer")
    with open(os.path.join(tokenizer_dir, "tokenizer.json"), "rb") as f:
      tok_hash = hashlib.sha1(f.read()).hexdigest()[:10]
    path = os.path.join(assets.cache_root(), "prepared",
                        f"local-v3-{tok_hash}-T{cfg.data.seq_len}")
    if not os.path.exists(os.path.join(path, "manifest.json")):
      if jax.process_index() == 0:
        domains = {d: os.path.join(root, d) for d in sorted(os.listdir(root))
                   if os.path.isdir(os.path.join(root, d))}
        prepare(tokenizer_dir, domains, path, seq_len=cfg.data.seq_len,
                eval_docs=_local_eval_docs(domains), eval_fraction=0.0, workers=2, seed=0)
      distributed.barrier("prepare-local")
  else:
    raise JShearError("no data: set config.data.path to a prepared dataset "
                      "(python -m jshear.data.prepare) or config.data.corpus='local'")
  if not os.path.isdir(path):
    raise JShearError(f"config.data.path {path!r} is not a directory")
  tok = model_io.load_tokenizer(tokenizer_dir) if tokenizer_dir else None
  manifest = load_manifest(path, tok)  # refuses a tokenizer mismatch
  if manifest["seq_len"] != cfg.data.seq_len:
    raise JShearError(f"config.data.seq_len={cfg.data.seq_len} but {path} was prepared with "
                      f"seq_len={manifest['seq_len']}")
  return path


def _local_eval_docs(domains: dict) -> dict:
  """Held-out documents per local domain: 1/8 of its documents, 2 to 24, enough rows for
  a held-out loss with a standard error below 0.05 nats (v1 held out 2 documents each,
  which left 3 rows in some domains)."""
  n = {d: sum(len(f) for _, _, f in os.walk(p)) for d, p in domains.items()}
  return {d: max(2, min(24, k // 8)) for d, k in n.items()}


# ---- the workdir: config, DONE markers ---------------------------------------------------

def _fill_defaults(old: dict, defaults: dict) -> dict:
  """`old` with keys added to the defaults since it was written (so new config fields at
  their default values do not make an older workdir look like another run)."""
  out = dict(old)
  for k, v in defaults.items():
    if k not in out:
      out[k] = v
    elif isinstance(v, dict) and isinstance(out[k], dict):
      out[k] = _fill_defaults(out[k], v)
  return out


def _has_progress(workdir: str) -> bool:
  """Whether any stage finished or saved a checkpoint (a failed start leaves neither)."""
  for s in stage_table.names():
    d = os.path.join(workdir, s)
    if os.path.exists(os.path.join(d, "DONE")):
      return True
    ck = os.path.join(d, "checkpoints")
    if os.path.isdir(ck) and any(n.isdigit() for n in os.listdir(ck)):
      return True
  return False


def check_workdir_config(cfg, workdir: str) -> None:
  """Refuses a workdir that holds a different run's progress (reads only)."""
  from jshear.config_base import base_config
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path) or cfg.overwrite or not _has_progress(workdir):
    return
  mine = json.loads(cfg.to_json_best_effort())
  with open(path) as f:
    old = _fill_defaults(json.load(f), json.loads(base_config().to_json_best_effort()))
  diff = sorted(k for k in set(old) | set(mine)
                if k not in _RESUMABLE_KEYS and old.get(k) != mine.get(k))
  if diff:
    raise JShearError(f"{workdir} holds a different run (config differs in {diff}); use "
                      "another --workdir or pass --config.overwrite=True")


def _stage_key(cfg, stage, listed) -> str:
  """Hash of the config a stage's result depends on: all of it but the blocks of the
  stages listed after it and of table rows after its own that have not run before it.
  `stage`: a Stage of `listed` (the run's listings, in order)."""
  d = json.loads(cfg.to_json_best_effort())
  at = [s.name for s in listed].index(stage.name)
  before = {s.first.name for s in listed[:at]}
  order = stage_table.names()
  later = {n for n in order[order.index(stage.first.name) + 1:] if n not in before}
  later |= {s.first.name for s in listed[at + 1:]} - before - {stage.first.name}
  blocks = sum((stage_table.get(n).blocks for n in sorted(later)), ())
  blocks += tuple(s.block for s in listed[at + 1:] if s.block != s.first.block)
  final = ("final_eval", "final_eval_rows")
  for k in _RESUMABLE_KEYS + final + blocks:
    d.pop(k, None)
  return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _marker(workdir, stage, name):
  path = os.path.join(workdir, stage, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _is_done(cfg, workdir, stage, listed) -> bool:
  done = _marker(workdir, stage.name, "DONE")
  key = _stage_key(cfg, stage, listed)
  return done is not None and done.get("config", key) == key


def _start_stage(cfg, workdir, stage, listed) -> None:
  """Clears what an earlier config left of this stage, then records this config's key."""
  key = _stage_key(cfg, stage, listed)
  seen = _marker(workdir, stage.name, "DONE") or _marker(workdir, stage.name, "STARTED")
  if seen is not None and seen.get("config", key) != key and jax.process_index() == 0:
    _log.info("stage %s ran with another config; starting it again", stage.name)
    shutil.rmtree(os.path.join(workdir, stage.name), ignore_errors=True)
    for extra in stage.also_writes:
      shutil.rmtree(os.path.join(workdir, extra), ignore_errors=True)
  distributed.barrier(f"start-{stage.name}")
  write_json_atomic(os.path.join(workdir, stage.name, "STARTED"), {"config": key})


def _mark_done(cfg, workdir, stage, listed, model: Model):
  write_json_atomic(os.path.join(workdir, stage.name, "DONE"), {
      "config": _stage_key(cfg, stage, listed),
      "params": count_params(model.params) if model.params is not None else None})


# ---- validation (before anything is written) ---------------------------------------------

def _start_model(cfg, stages) -> tuple[Model, str | None]:
  if "pretrain" in stages:
    mcfg = ModelConfig(**{k: cfg.model[k] for k in SHAPE_KEYS + (
        "attention_impl", "remat", "scan_layers")})
    return Model(mcfg, None, cfg.model.tokenizer or None), None
  # A run that begins by growing grow.source starts from it.
  first_grows = stages[0] == "grow" and cfg.grow.source
  path = cfg.init_from or (cfg.grow.source if first_grows else "") or resolve_source(
      cfg.model.source)
  if cfg.init_from and not os.path.isdir(path):
    raise JShearError(f"config.init_from {path!r} is not a directory")
  return load_any(path, cfg), path


def _validate_stages(cfg, mesh, listed, model: Model, spec) -> None:
  """Each listed stage's own checks and, for stages that may train, the batch layout, on
  the model shape it starts from (earlier stages' `shape` applied in order)."""
  mcfg = model.cfg
  for stage in listed:
    stage.validate(cfg, mcfg, spec)
    if stage.trains is not None:
      block = cfg[stage.block]
      try:
        shd.validate_layout(mesh, block.batch_size, block.grad_accum, mcfg.num_heads)
      except JShearError as err:
        raise JShearError(f"config.{stage.block}: {err}") from None
      if block.batch_size % jax.process_count():
        raise JShearError(f"config.{stage.block}.batch_size ({block.batch_size}) must "
                          f"divide by the number of processes ({jax.process_count()})")
    mcfg = stage.shape(cfg, mcfg, spec)


def _check_distill(cfg, student: ModelConfig, source: ModelConfig | None) -> None:
  from jshear import distill
  from jshear.train.stages.continued import teacher_items
  teachers = [("source", source, True) if item == "source" else
              (item, model_io.read_model_config(resolve_source(item)), False)
              for item in teacher_items(cfg, source is not None)]
  distill.validate_config(cfg.distill, student, teachers, steps=cfg.continued.steps)


def prepare(cfg, workdir: str, stages, mesh) -> tuple[RunContext, Model]:
  """Everything a run needs, validated; nothing is written to the workdir."""
  from jshear import config_check
  config_check.check(cfg)  # every key's value and range, before anything is loaded
  check_one_schedule(cfg)
  data_stream(cfg)
  model, path = _start_model(cfg, stages)
  spec = prune_spec(cfg, model.cfg) if "prune" in stages or "finalize" in stages else None
  listed = stage_table.occurrences(stages, cfg)
  _validate_stages(cfg, mesh, listed, model, spec)
  data_dir = None
  if any(stage_table.get(s).trains is not None for s in stages):
    data_dir = resolve_data(cfg, model.tokenizer)
  pruning = spec is not None
  source = None
  if model.params is not None and (pruning or model.origin is None):
    # This model is the unpruned source of whatever the run makes; what it prunes records it.
    if pruning:
      model.origin = source_mod.origin_of(path, model, workdir)
    source = model
  if cfg.distill.enable and "continue" in stages:
    student = target_config(model.cfg, spec.target) if pruning else model.cfg
    src_cfg = source.cfg if source is not None else (
        model.cfg if model.params is not None else None)
    _check_distill(cfg, student, src_cfg)
  check_workdir_config(cfg, workdir)
  ctx = RunContext(cfg=cfg, workdir=workdir, mesh=mesh, writer=None, data_dir=data_dir,
                   prune_trains=trains_in_prune(cfg),
                   stages=listed, spec=spec, source=source)
  if "continue" in stages and source is None and model.params is not None:
    from jshear.train.stages.continued import needs_source
    why = needs_source(cfg)
    if why:  # a pruned start: its recorded source must be there (and unchanged)
      source_mod.unpruned_source(ctx, model, why)
  return ctx, model


# ---- the run ------------------------------------------------------------------------

def run(cfg, workdir: str) -> dict:
  distributed.initialize(cfg.distributed.coordinator, cfg.distributed.num_processes,
                         cfg.distributed.process_id)
  _log.info("topology: %s", distributed.topology())
  stages = parse_stages(cfg.stages)
  cfg = with_stage_blocks(cfg)
  workdir = os.path.abspath(workdir)
  mesh = shd.make_mesh(dict(cfg.mesh.ici), dict(cfg.mesh.dcn))
  _log.info("mesh: %s", shd.describe(mesh))
  with jax.set_mesh(mesh):
    ctx, model = prepare(cfg, workdir, stages, mesh)
    write_json_atomic(os.path.join(workdir, "config.json"), json.loads(cfg.to_json_best_effort()))
    ctx.writer = MetricsWriter(workdir)
    try:
      out = _run_stages(ctx, model)
    finally:
      ctx.writer.close()
  return out


def _run_stages(ctx: RunContext, model: Model) -> dict:
  cfg, workdir = ctx.cfg, ctx.workdir
  ctx.out["source_params"] = count_params(model.params) if model.params is not None else None
  listed = ctx.stages
  for stage in listed:
    if _is_done(cfg, workdir, stage, listed):
      _log.info("stage %s already done; skipping", stage.name)
      if stage.output:
        model = load_any(os.path.join(workdir, stage.output), cfg)
      continue
    _start_stage(cfg, workdir, stage, listed)
    ctx.stage = stage
    model = stage.run(ctx, model)
    ctx.stage = None
    _mark_done(cfg, workdir, stage, listed, model)
  out = {"workdir": workdir, "stages": [s.name for s in listed], **ctx.out}
  out["final_params"] = count_params(model.params) if model.params is not None else None
  out["final_config"] = json.loads(model.cfg.to_json())
  if ctx.data_dir and cfg.final_eval and model.params is not None:
    out["eval"] = _final_eval(ctx, model)
    out["eval_test"] = ctx.out["eval_test"]
  out["tokens_per_s"] = _stage_throughput(ctx.writer.path)
  write_json_atomic(os.path.join(workdir, "summary.json"), out)
  if cfg.drop_checkpoints:
    from jshear.train import cleanup
    # a stage an earlier run on this workdir listed counts too, keyed as if listed alone
    by_name = {**{s.name: (s, (s,)) for s in stage_table.STAGES},
               **{s.name: (s, listed) for s in listed}}
    cleanup.drop(workdir, list(by_name), lambda s: _is_done(cfg, workdir, *by_name[s]))
  return out


def _final_eval(ctx: RunContext, model: Model) -> dict:
  """Per-domain held-out losses of the source and final models on the test rows (never
  the validation rows dynamic batch loading read), config.final_eval_rows a domain; the
  means with their standard errors go to the summary's `eval_test`."""
  from jshear.eval.heldout import heldout_losses
  source = ctx.source
  if source is None and model.origin:
    try:
      source = source_mod.unpruned_source(ctx, model, ["the final evaluation"])
    except JShearError as err:
      _log.warning("no source row in the final evaluation: %s", err)
  out, stats = {}, {}
  rows = int(ctx.cfg.get("final_eval_rows", 64))
  for name, m in (("source", source), ("final", model)):
    if m is not None and m.params is not None:
      res = heldout_losses(ctx.data_dir, ctx.mesh, m.cfg, m.params, rows=rows)
      out[name] = {d: v["loss"] for d, v in res["domains"].items()}
      stats[name] = {"mean": res["mean"], "se": res["se"], "split": res["split"],
                     "rows": {d: v["rows"] for d, v in res["domains"].items()}}
      bad = sorted(d for d, l in out[name].items() if not np.isfinite(l))
      if bad or not np.isfinite(res["mean"]):  # scored rows that give NaN: a broken model
        raise JShearError(f"final evaluation: the {name} model's held-out loss is not finite "
                          f"in {bad or 'the mean'}; no summary is written")
  ctx.out["eval_test"] = stats
  return out


def _stage_throughput(metrics_path: str) -> dict:
  from jshear.metrics import read_metrics
  recs = read_metrics(os.path.dirname(metrics_path))
  out = {}
  for r in recs:
    if "tokens_per_s" in r:
      out.setdefault(r["stage"], []).append(r["tokens_per_s"])
  # Skip the first interval of each stage (it includes compilation).
  return {k: float(np.median(v[1:] if len(v) > 1 else v)) for k, v in out.items()}
