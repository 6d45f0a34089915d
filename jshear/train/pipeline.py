"""The stages of a run, in order, each resumable; a finished stage leaves WORKDIR/<stage>/DONE.

  pretrain  random init -> WORKDIR/pretrained/
  prune     learned masks on the source -> WORKDIR/prune/checkpoints, WORKDIR/masks/
  finalize  deterministic masks folded and sliced -> WORKDIR/pruned/ (jshear model dir)
  continue  continued pretraining with dynamic batch loading -> WORKDIR/continued/
  export    the latest model -> WORKDIR/hf/ (a plain Hugging Face directory)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from jshear import distributed, model_io
from jshear import sharding as shd
from jshear.config_base import STAGES
from jshear.errors import JShearError
from jshear.metrics import MetricsWriter
from jshear.model.config import ModelConfig
from jshear.model.masks import mask_shapes
from jshear.model.params import count_params, init_params
from jshear.prune.deterministic import deterministic_masks
from jshear.prune.finalize import finalize
from jshear.prune.targets import TargetShape, target_config, validate_target
from jshear.train.loop import Context, PruneSpec, restore_final_state, train_stage

_log = logging.getLogger(__name__)
# Keys that may differ between invocations on one workdir (everything else must match).
_RESUMABLE_KEYS = ("stages", "overwrite", "init_from")
# Ways to choose masks; every one ends in the same finalize (fold + slice).
PRUNE_METHODS = ("learned", "magnitude", "random", "importance", "layerchop", "dimchop")
_WIDTH_METHODS = ("importance", "magnitude", "random", "none")  # prune.layerchop_width


def parse_stages(text) -> list[str]:
  stages = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
  bad = [s for s in stages if s not in STAGES]
  if bad or not stages:
    raise JShearError(f"config.stages: unknown stage(s) {bad} (known: {list(STAGES)})")
  return stages


# ---- models in and out ---------------------------------------------------------------

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


def load_any(path: str, cfg):
  """(model_cfg, numpy params, tokenizer dir) from a jshear model dir or an HF dir."""
  overrides = dict(attention_impl=cfg.model.attention_impl, remat=cfg.model.remat,
                   scan_layers=cfg.model.scan_layers)
  if os.path.exists(os.path.join(path, "model_config.json")):
    mcfg, params = model_io.load_model(path)
    params = jax.device_get(params)
    tok = model_io.tokenizer_dir(path)
  else:
    from jshear.convert.hf_import import read_hf_params
    mcfg, params = read_hf_params(path)
    tok = path
  return mcfg.replace(**overrides), params, tok


def gather_params(params):
  """Global (possibly multi-host sharded) arrays -> host numpy on every process."""
  if jax.process_count() == 1:
    return jax.device_get(params)
  return multihost_utils.process_allgather(params, tiled=True)


def save_dir(path: str, mcfg: ModelConfig, params, tokenizer_dir) -> None:
  host = gather_params(params)
  if jax.process_index() == 0:
    model_io.save_model(path, mcfg.replace(attention_impl="xla", remat="none"), host,
                        tokenizer_dir=tokenizer_dir, overwrite=True)
  distributed.barrier(f"save-{os.path.basename(path)}")


# ---- data ---------------------------------------------------------------------------

def resolve_data(cfg, tokenizer_dir: str | None) -> str:
  from jshear.data.prepare import load_manifest, load_tokenizer, prepare
  if cfg.data.path:
    path = cfg.data.path
  elif cfg.data.corpus == "local":
    from jshear.data import corpus
    from jshear import assets
    root = assets.corpus_dir()
    if not tokenizer_dir:
      raise JShearError("config.data.corpus='local' needs a model with a tokenizer")
    with open(os.path.join(tokenizer_dir, "tokenizer.json"), "rb") as f:
      tok_hash = hashlib.sha1(f.read()).hexdigest()[:10]
    path = os.path.join(assets.cache_root(), "prepared",
                        f"local-v1-{tok_hash}-T{cfg.data.seq_len}")
    if not os.path.exists(os.path.join(path, "manifest.json")):
      if jax.process_index() == 0:
        domains = {d: os.path.join(root, d) for d in sorted(os.listdir(root))
                   if os.path.isdir(os.path.join(root, d))}
        prepare(tokenizer_dir, domains, path, seq_len=cfg.data.seq_len, eval_docs=2,
                eval_fraction=0.0, workers=2, seed=0)
      distributed.barrier("prepare-local")
  else:
    raise JShearError("no data: set config.data.path to a prepared dataset "
                      "(python -m jshear.data.prepare) or config.data.corpus='local'")
  tok = load_tokenizer(tokenizer_dir) if tokenizer_dir else None
  manifest = load_manifest(path, tok)  # refuses a tokenizer mismatch
  if manifest["seq_len"] != cfg.data.seq_len:
    raise JShearError(f"config.data.seq_len={cfg.data.seq_len} but {path} was prepared with "
                      f"seq_len={manifest['seq_len']}")
  return path


# ---- the run ------------------------------------------------------------------------

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


def check_workdir_config(cfg, workdir: str) -> None:
  from jshear.config_base import base_config
  path = os.path.join(workdir, "config.json")
  mine = json.loads(cfg.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      old = _fill_defaults(json.load(f), json.loads(base_config().to_json_best_effort()))
    diff = sorted(k for k in set(old) | set(mine)
                  if k not in _RESUMABLE_KEYS and old.get(k) != mine.get(k))
    if diff and not cfg.overwrite:
      raise JShearError(f"{workdir} holds a different run (config differs in {diff}); use "
                        "another --workdir or pass --config.overwrite=True")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(mine, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def prune_spec(cfg, src: ModelConfig) -> PruneSpec:
  t = cfg.prune.target
  target = TargetShape(t.num_layers, t.num_heads, t.num_kv_heads or src.num_kv_heads,
                       t.hidden_size, t.intermediate_size)
  groups = tuple(g.strip() for g in cfg.prune.groups.split(",") if g.strip())
  if cfg.prune.method not in PRUNE_METHODS:
    raise JShearError(f"config.prune.method={cfg.prune.method!r} (known: {list(PRUNE_METHODS)})")
  validate_target(src, target, groups)
  if cfg.prune.method == "dimchop":
    from jshear.prune import iterative
    iterative.check_dimchop(cfg.prune)
  if cfg.prune.method == "layerchop":
    from jshear.prune import layerchop
    layerchop.dropped_layers(src.num_layers, target.num_layers, cfg.prune.layerchop_layout)
    width = cfg.prune.layerchop_width
    if width not in _WIDTH_METHODS:
      raise JShearError(f"config.prune.layerchop_width={width!r} (known: {list(_WIDTH_METHODS)})")
    narrower = [f for f in ("num_heads", "num_kv_heads", "hidden_size", "intermediate_size")
                if getattr(target, f) < getattr(src, f)]
    if width == "none" and narrower:
      raise JShearError(f"config.prune.layerchop_width='none' prunes depth only, but the target "
                        f"is narrower than the source in {narrower}; set layerchop_width to "
                        f"importance, magnitude or random, or keep those target fields at the "
                        f"source's values")
    if cfg.prune.layerchop_every:
      from jshear.prune import iterative
      n = len(layerchop.dropped_layers(src.num_layers, target.num_layers,
                                       cfg.prune.layerchop_layout))
      iterative.check_layerchop(int(cfg.prune.layerchop_every), int(cfg.prune.steps), n)
  return PruneSpec(target, groups, cfg.prune.constraint, cfg.prune.target_warmup_steps)


def trains_in_prune(cfg) -> bool:
  """Whether the prune stage trains the weights (learned masks and iterative pruning) rather
  than choosing masks in one shot."""
  m = cfg.prune.method
  return m in ("learned", "dimchop") or (m == "layerchop" and bool(cfg.prune.layerchop_every))


def mask_schedule(cfg, mcfg: ModelConfig, params, spec: PruneSpec, *, workdir, data_dir, mesh):
  """The iterative methods' `MaskSchedule` (dimchop, gradual layerchop)."""
  from jshear.prune import importance, iterative, layerchop
  if cfg.prune.method == "dimchop":
    if not data_dir:
      raise JShearError("prune.method dimchop needs calibration data (config.data)")
    rows = importance.calibration_rows(data_dir, cfg.prune.calib_rows)
    score = importance.make_scorer(mcfg, mesh)
    return iterative.dimchop_schedule(cfg, mcfg, spec.target, spec.groups,
                                      lambda p: score(p, rows, cfg.prune.calib_batch))
  final = one_shot_masks(cfg, mcfg, params, spec, workdir=workdir, data_dir=data_dir, mesh=mesh)
  dropped = layerchop.dropped_layers(mcfg.num_layers, spec.target.num_layers,
                                     cfg.prune.layerchop_layout)
  return iterative.layerchop_schedule(mcfg, spec.target, spec.groups,
                                      int(cfg.prune.layerchop_every), int(cfg.prune.steps),
                                      dropped, final)


def _done(workdir, stage):
  return os.path.exists(os.path.join(workdir, stage, "DONE"))


def _mark_done(workdir, stage, info: dict):
  if jax.process_index() == 0:
    os.makedirs(os.path.join(workdir, stage), exist_ok=True)
    with open(os.path.join(workdir, stage, "DONE"), "w") as f:
      json.dump(info, f, indent=2)


def one_shot_masks(cfg, mcfg: ModelConfig, params, spec: PruneSpec, *, workdir=None,
                   data_dir=None, mesh=None) -> dict:
  """0/1 masks of a one-shot method. `importance` (and layerchop's widths by importance)
  scores calibration rows from `data_dir` and caches them in WORKDIR/scores.npz."""
  from jshear.prune import baselines, layerchop

  def scores_by(method, groups):
    if not groups:
      return {}
    if method == "magnitude":
      return baselines.magnitude_scores(mcfg, params, groups)
    if method == "random":
      return baselines.random_scores(mcfg, groups, cfg.seed)
    if method == "importance":
      from jshear.prune import importance
      if not data_dir:
        raise JShearError("prune.method importance needs calibration data (config.data)")
      path = os.path.join(workdir, "scores.npz") if workdir else None
      if path:
        s = importance.cached_scores(path, mcfg, params, data_dir, cfg.prune.calib_rows,
                                     cfg.prune.calib_batch, mesh)
      else:
        s = importance.compute_scores(mcfg, params, importance.calibration_rows(
            data_dir, cfg.prune.calib_rows), cfg.prune.calib_batch, mesh)
      return {g: s[g] for g in groups}
    raise AssertionError(method)

  method = cfg.prune.method
  if method == "layerchop":
    width = tuple(g for g in spec.groups if g != "layer")
    wmethod = cfg.prune.layerchop_width
    scores = {} if wmethod == "none" else scores_by(wmethod, width)
    if wmethod == "none":  # nothing narrower (checked in prune_spec): keep every unit
      scores = {g: np.ones(mask_shapes(mcfg)[g], np.float32) for g in width}
    if "layer" in spec.groups:
      scores["layer"] = layerchop.layer_scores(mcfg.num_layers, spec.target.num_layers,
                                               cfg.prune.layerchop_layout)
  else:
    scores = scores_by(method, spec.groups)
  return baselines.masks_from_scores(mcfg, scores, spec.target)


def save_mask_artefacts(workdir: str, prune_state, src: ModelConfig, spec: PruneSpec,
                        masks: dict | None = None) -> dict:
  """Masks for users to inspect and for finalize: learned `log_alpha`, soft deterministic
  masks and 0/1 masks (one-shot methods give 0/1 masks directly)."""
  if prune_state is not None:
    soft = deterministic_masks(prune_state, src, spec.target)
    binary = deterministic_masks(prune_state, src, spec.target, binary=True)
  else:
    soft = binary = masks
  if jax.process_index() == 0:
    d = os.path.join(workdir, "masks")
    os.makedirs(d, exist_ok=True)
    if prune_state is not None:
      np.savez(os.path.join(d, "log_alpha.npz"),
               **{g: np.asarray(v) for g, v in prune_state.log_alpha.items()})
    np.savez(os.path.join(d, "masks.npz"), **{g: np.asarray(v) for g, v in soft.items()})
    np.savez(os.path.join(d, "binary_masks.npz"), **{g: np.asarray(v) for g, v in binary.items()})
    kept = {g: np.asarray(v).sum(axis=-1).tolist() for g, v in binary.items()}
    with open(os.path.join(d, "masks.json"), "w") as f:
      json.dump({"target": spec.target.__dict__, "groups": list(spec.groups), "kept": kept},
                f, indent=2)
  distributed.barrier("masks")
  return soft


def run(cfg, workdir: str) -> dict:
  distributed.initialize(cfg.distributed.coordinator, cfg.distributed.num_processes,
                         cfg.distributed.process_id)
  _log.info("topology: %s", distributed.topology())
  stages = parse_stages(cfg.stages)
  workdir = os.path.abspath(workdir)
  mesh = shd.make_mesh(dict(cfg.mesh.ici), dict(cfg.mesh.dcn))
  _log.info("mesh: %s", shd.describe(mesh))
  check_workdir_config(cfg, workdir)
  writer = MetricsWriter(workdir)
  summary = {"workdir": workdir, "stages": stages}
  try:
    with jax.set_mesh(mesh):
      summary.update(_run_stages(cfg, workdir, stages, mesh, writer))
  finally:
    writer.close()
  return summary


def _run_stages(cfg, workdir, stages, mesh, writer) -> dict:
  out = {}
  # The model each stage starts from.
  if "pretrain" in stages:
    mcfg = ModelConfig(**{k: cfg.model[k] for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
        "num_kv_heads", "head_dim", "family", "qk_norm", "tie_embeddings", "rope_theta",
        "attention_impl", "remat", "scan_layers")})
    tok = cfg.model.tokenizer or None
    params = None
  else:
    src_path = cfg.init_from or resolve_source(cfg.model.source)
    mcfg, params, tok = load_any(src_path, cfg)
  spec = prune_spec(cfg, mcfg) if "prune" in stages or "finalize" in stages else None
  data_dir = None
  if any(s in stages for s in ("pretrain", "prune", "continue")):
    data_dir = resolve_data(cfg, tok)
  if cfg.distill.enable and "continue" in stages:
    _check_distill(cfg, mcfg if spec is None else target_config(mcfg, spec.target),
                   mcfg if params is not None else None)
  ctx = Context(cfg=cfg, workdir=workdir, mesh=mesh, writer=writer, data_dir=data_dir)
  out["source_params"] = count_params(params) if params is not None else None
  source = (mcfg, params)

  for stage in stages:
    if _done(workdir, stage):
      _log.info("stage %s already done; skipping", stage)
      if stage == "finalize" or stage == "continue" or stage == "pretrain":
        name = {"finalize": "pruned", "continue": "continued", "pretrain": "pretrained"}[stage]
        mcfg, params, tok = load_any(os.path.join(workdir, name), cfg)
      continue
    if stage == "pretrain":
      params = jax.device_get(init_params(mcfg, jax.random.key(cfg.seed)))
      state, _ = train_stage(ctx, "pretrain", cfg.pretrain, mcfg, params)
      save_dir(os.path.join(workdir, "pretrained"), mcfg, state["params"], tok)
      params = gather_params(state["params"])
    elif stage == "prune" and cfg.prune.method == "learned":
      state, _ = train_stage(ctx, "prune", cfg.prune, mcfg, params, spec)
      save_mask_artefacts(workdir, jax.tree.map(shd.to_host, state["prune"]), mcfg, spec)
    elif stage == "prune" and trains_in_prune(cfg):
      schedule = mask_schedule(cfg, mcfg, params, spec, workdir=workdir, data_dir=data_dir,
                               mesh=mesh)
      state, _ = train_stage(ctx, "prune", cfg.prune, mcfg, params, schedule=schedule)
      final = {g: shd.to_host(m) for g, m in state["masks"].items()}
      save_mask_artefacts(workdir, None, mcfg, spec, final)
    elif stage == "prune":
      save_mask_artefacts(workdir, None, mcfg, spec, one_shot_masks(
          cfg, mcfg, params, spec, workdir=workdir, data_dir=data_dir, mesh=mesh))
    elif stage == "finalize":
      masks_path = os.path.join(workdir, "masks", "masks.npz")
      if not os.path.exists(masks_path):
        raise JShearError(f"stage finalize needs {masks_path} from a finished prune stage")
      with np.load(masks_path) as f:
        masks = {k: f[k] for k in f.files}
      if trains_in_prune(cfg):  # the weights were trained along with the masks
        learned = cfg.prune.method == "learned"
        params = gather_params(restore_final_state(
            ctx, "prune", cfg.prune, mcfg, spec if learned else None,
            None if learned else spec.groups)["params"])
      if mcfg.tie_embeddings and "hidden" in masks:
        # Keep a tied source tied: hidden channels survive at weight 1 (see finalize.py).
        masks["hidden"] = (masks["hidden"] != 0).astype(np.float32)
      mcfg, params = finalize(mcfg, params, masks)
      params = jax.device_get(params)
      save_dir(os.path.join(workdir, "pruned"), mcfg, params, tok)
      out["pruned_params"] = count_params(params)
    elif stage == "continue":
      setup = _distill_setup(cfg, workdir, mcfg, source) if cfg.distill.enable else None
      # Dynamic batch loading compares against the unpruned source, not the pruned start.
      reference = None
      if source[1] is not None and source[0] != mcfg:
        from jshear.train.loop import DomainEval
        reference = lambda: DomainEval(ctx, source[0], _eval_domains(data_dir),
                                       cfg.continued.batch_size,
                                       cfg.continued.eval_batches)(source[1])
      state, _ = train_stage(ctx, "continue", cfg.continued, mcfg, params, distill=setup,
                             reference=reference)
      setup = None
      save_dir(os.path.join(workdir, "continued"), mcfg, state["params"], tok)
      params = gather_params(state["params"])
    elif stage == "export":
      if jax.process_index() == 0:
        from jshear.convert.hf_export import export_hf
        dtype = cfg.export.dtype or None
        out["hf_dir"] = export_hf(mcfg.replace(attention_impl="xla", remat="none"), params,
                                  os.path.join(workdir, "hf"), tokenizer_dir=tok, dtype=dtype,
                                  overwrite=True)
      distributed.barrier("export")
    _mark_done(workdir, stage, {"params": count_params(params) if params is not None else None})
  out["final_params"] = count_params(params) if params is not None else None
  out["final_config"] = json.loads(mcfg.to_json())
  if data_dir and cfg.final_eval and params is not None:
    from jshear.train.loop import DomainEval
    block = cfg.continued if "continue" in stages else cfg.prune
    out["eval"] = {}
    for name, (c, p) in (("source", source), ("final", (mcfg, params))):
      if p is not None:
        out["eval"][name] = DomainEval(ctx, c, _eval_domains(data_dir), block.batch_size,
                                       block.eval_batches)(p)
  out["tokens_per_s"] = _stage_throughput(writer.path)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(out, f, indent=2)
  return out


def _distill_setup(cfg, workdir: str, student: ModelConfig, source):
  """Teachers for the continue stage: distill.teachers, "" or "source" = the unpruned source
  (the model this run started from). The pruning's 0/1 masks, when this run pruned, relate
  the student's layers and hidden channels to the source's (for hidden-state matching)."""
  from jshear import distill
  teachers = []
  for item in distill.teacher_paths(cfg.distill.teachers):
    if item == "source":
      tcfg, tparams = source
      if tparams is None:
        raise JShearError("distill.teachers: the source teacher needs a source model "
                          "(this run pretrains from scratch); name teacher dirs instead")
      teachers.append(("source", tcfg, tparams, True))
    else:
      tcfg, tparams, _ = load_any(resolve_source(item), cfg)
      teachers.append((item, tcfg, tparams, False))
  kept_layers = kept_hidden = None
  path = os.path.join(workdir, "masks", "binary_masks.npz")
  if os.path.exists(path):
    with np.load(path) as f:
      if "layer" in f.files:
        kept_layers = np.nonzero(f["layer"])[0]
      if "hidden" in f.files:
        kept_hidden = np.nonzero(f["hidden"])[0]
  return distill.build_setup(cfg.distill, student, teachers, steps=cfg.continued.steps,
                             seed=cfg.seed * 1000 + 5, compute_dtype=_compute_dtype(cfg),
                             kept_layers=kept_layers, kept_hidden=kept_hidden)


def _model_config(path: str) -> ModelConfig:
  """A jshear or HF model dir's config, without reading weights."""
  if os.path.exists(os.path.join(path, "model_config.json")):
    return model_io.load_config(path)
  return ModelConfig.from_hf_dir(path)


def _check_distill(cfg, student: ModelConfig, source: ModelConfig | None) -> None:
  from jshear import distill
  teachers = []
  for item in distill.teacher_paths(cfg.distill.teachers):
    if item == "source":
      if source is None:
        raise JShearError("distill.teachers: the source teacher needs a source model "
                          "(this run pretrains from scratch); name teacher dirs instead")
      teachers.append(("source", source, True))
    else:
      teachers.append((item, _model_config(resolve_source(item)), False))
  distill.validate_config(cfg.distill, student, teachers, steps=cfg.continued.steps)


def _compute_dtype(cfg):
  name = cfg.model.compute_dtype
  return None if name in ("", "float32", None) else jax.numpy.dtype(name)


def _eval_domains(data_dir):
  from jshear.data.prepare import load_manifest
  return list(load_manifest(data_dir)["domains"])


def _stage_throughput(metrics_path: str) -> dict:
  from jshear.metrics import read_metrics
  recs = read_metrics(os.path.dirname(metrics_path))
  out = {}
  for r in recs:
    if "tokens_per_s" in r:
      out.setdefault(r["stage"], []).append(r["tokens_per_s"])
  # Skip the first interval of each stage (it includes compilation).
  return {k: float(np.median(v[1:] if len(v) > 1 else v)) for k, v in out.items()}
