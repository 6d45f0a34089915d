"""Memory planner: compile the real train step ahead of time on abstract shapes.

  python -m jshear.train.plan --config=configs/sheared_2p7b.py --stage=prune --devices=8 \
      --mesh=data=1,fsdp=8,tensor=1 --source_shape=llama2-7b --hbm_gb=80

The source's shape comes from `--source_shape`, else `model.source` (an HF or jshear model
dir's config; "smollm2" is known by name), else the config's `model.source_shape`; a
`pretrain` stage plans the config's own `model.*` shape. `--stage` defaults to the
config's first training stage; a later listing is named as the run names it (`pretrain_2`
in pretrain,grow,pretrain) and plans the shape the stages before it leave (the grown one).

No weights are loaded and nothing is allocated: fake CPU devices stand in for the cluster,
`jax.jit(step).lower(...).compile().memory_analysis()` reports per-device bytes. CPU XLA
plans buffers differently from GPU/TPU XLA, so treat activations as an estimate; params
and optimizer state are exact (shard shapes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Shapes of well-known sources, so planning needs no checkpoint on disk.
SOURCE_SHAPES = {
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                      num_heads=32, num_kv_heads=32, head_dim=128, norm_eps=1e-5),
    "llama2-70b": dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672,
                       num_layers=80, num_heads=64, num_kv_heads=8, head_dim=128, norm_eps=1e-5),
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                      num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                      rope_theta=500000.0),
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64,
                         tie_embeddings=True, rope_theta=1000000.0, norm_eps=1e-6,
                         qkv_bias=True),
    "qwen3-0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                       num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128,
                       tie_embeddings=True, rope_theta=1000000.0, norm_eps=1e-6, qk_norm=True),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
                         tie_embeddings=True, rope_theta=100000.0),
}


def _training_stages() -> tuple:
  from jshear.train import stages
  return tuple(s.name for s in stages.training_stages())


def _listed(cfg) -> tuple:
  """The Stage of each listing in cfg.stages (later listings: `pretrain_2`, ...)."""
  from jshear.train import stages
  from jshear.train.pipeline import parse_stages, with_stage_blocks
  return stages.occurrences(parse_stages(with_stage_blocks(cfg).stages), cfg)


def _stage(cfg, name: str):
  """The Stage `name` plans: a listing of cfg.stages, else the table row."""
  from jshear.train import stages
  return next((s for s in _listed(cfg) if s.name == name), None) or stages.get(name)


def plannable(cfg) -> tuple:
  """Names --stage accepts: the table's training stages, the config's later listings, and
  blockwise when the config lists it (its block step is not a stage step)."""
  listed = _listed(cfg)
  later = tuple(s.name for s in listed
                if s.previous is not None and s.first.name in _training_stages())
  blocks = ("blockwise",) if any(s.name == "blockwise" for s in listed) else ()
  return _training_stages() + later + blocks


def default_stage(cfg) -> str:
  """The config's first training stage (a pretrain-only config plans pretrain)."""
  stages = [s.strip() for s in cfg.stages.split(",")]
  return next((s for s in stages if s in _training_stages()), "prune")


def _named_shape(name: str, where: str):
  from jshear.errors import JShearError
  from jshear.model.config import ModelConfig
  if name not in SOURCE_SHAPES:
    raise JShearError(f"{where}={name!r} is not a known source shape (known: "
                      f"{', '.join(sorted(SOURCE_SHAPES))})")
  return ModelConfig(**SOURCE_SHAPES[name])


def _config_from_dir(path: str):
  from jshear import model_io
  from jshear.errors import JShearError
  if not os.path.isdir(path):
    raise JShearError(f"model.source={path!r} is not a directory here; to plan without the "
                      f"weights, pass --source_shape (one of {', '.join(sorted(SOURCE_SHAPES))})")
  return model_io.read_model_config(path)


def source_config(cfg, stage: str, source_shape: str = ""):
  """The model shape the planned stage starts from; no weights are read."""
  from jshear.errors import JShearError
  from jshear.model.config import SHAPE_KEYS, ModelConfig
  listed = [s.name for s in _listed(cfg)]
  from_scratch = listed[0] == "pretrain" and stage in listed  # the run begins by pretraining
  if stage == "pretrain" or from_scratch:
    mcfg = ModelConfig(**{k: cfg.model[k] for k in SHAPE_KEYS})
  elif source_shape:
    mcfg = _named_shape(source_shape, "--source_shape")
  elif cfg.model.source == "smollm2":        # the asset, known by shape (no download needed)
    mcfg = ModelConfig(**SOURCE_SHAPES["smollm2-135m"])
  elif cfg.model.source:
    mcfg = _config_from_dir(cfg.model.source)
  elif cfg.model.get("source_shape"):
    mcfg = _named_shape(cfg.model.source_shape, "config model.source_shape")
  else:
    raise JShearError(
        f"no source shape to plan {stage!r} with: the config's model.source and "
        f"model.source_shape are empty; pass --source_shape (one of "
        f"{', '.join(sorted(SOURCE_SHAPES))}), or set model.source to a model dir")
  return mcfg.replace(remat=cfg.model.remat, scan_layers=cfg.model.scan_layers,
                      attention_impl="xla")


def load_config(path: str, sets=()):
  """The run config file's get_config(), with `--set KEY=VALUE` overrides applied."""
  import importlib.util

  from jshear.errors import JShearError
  spec = importlib.util.spec_from_file_location("run_config", path)
  if spec is None or not os.path.exists(path):
    raise JShearError(f"--config {path} does not exist")
  mod = importlib.util.module_from_spec(spec)
  sys.path.insert(0, os.getcwd())
  spec.loader.exec_module(mod)
  cfg = mod.get_config()
  for item in sets:
    _set(cfg, item)
  return cfg


def _set(cfg, item: str) -> None:
  import ast

  from jshear.errors import JShearError
  key, _, val = item.partition("=")
  *path, leaf = key.split(".")
  node = cfg
  for k in path:
    if k not in node:
      raise JShearError(f"--set {key}: unknown config key {k!r}")
    node = node[k]
  if leaf not in node:
    raise JShearError(f"--set {key}: unknown config key")
  try:
    node[leaf] = ast.literal_eval(val)
  except (ValueError, SyntaxError):
    node[leaf] = val              # a bare word: a string (model.source_shape=llama2-7b)


def _parse_mesh(text: str) -> dict:
  out = {}
  for part in filter(None, text.split(",")):
    k, _, v = part.partition("=")
    out[k.strip()] = int(v)
  return out


def stage_plan(cfg, stage: str, mcfg, mesh):
  """(the stage's StageStep, its block, the model config it trains) from the run config,
  built by the same `jshear.train.compile.stage_step` the loop calls. Teachers come from
  the config (the source's shape for distill.teachers=""), shapes only."""
  from jshear.errors import JShearError
  from jshear.train import stages as stage_table
  from jshear.train.compile import stage_step
  from jshear.train.context import Context
  from jshear.train.pipeline import prune_spec, trains_in_prune

  st = _stage(cfg, stage)
  block = cfg[st.block]
  src = mcfg
  # A later stage plans the pruned shape when the config names a target (else the shape
  # given, e.g. an already pruned model dir).
  pruning = stage == "prune" or ("prune" in cfg.stages.split(",")
                                 and bool(cfg.prune.target.num_layers))
  spec = prune_spec(cfg, mcfg) if pruning and st.first.name != "pretrain" else None
  for before in _stages_before(cfg, st):  # the shape this stage starts from
    mcfg = before.shape(cfg, mcfg, spec)
  prune, mask_groups = None, None
  if stage == "prune":
    if not trains_in_prune(cfg):
      raise JShearError(f"prune.method={cfg.prune.method!r} chooses masks in one shot: its prune "
                        f"stage does not train, so there is no step to plan")
    if cfg.prune.method == "learned":
      prune = spec
    else:
      mask_groups = spec.groups  # iterative: fixed masks in the state
  shd_check(mesh, block, mcfg, st.block)
  distiller = None
  if st.first.name == "continue" and cfg.distill.enable:
    distiller = _distiller(cfg, mcfg, src)
  ctx = Context(cfg=cfg, workdir="", mesh=mesh, writer=None, data_dir="",
                prune_trains=trains_in_prune(cfg) if pruning else False)
  return stage_step(ctx, st, mcfg, prune, mask_groups, distiller=distiller), block, mcfg


def _stages_before(cfg, st) -> list:
  """The stages that run before `st`: those listed before it, or (`st` not listed) the
  listed ones whose table row comes before its row."""
  from jshear.train import stages as stage_table
  listed = list(_listed(cfg))
  names = [s.name for s in listed]
  if st.name in names:
    return listed[:names.index(st.name)]
  order = stage_table.names()
  return [s for s in listed if order.index(s.first.name) < order.index(st.first.name)]


def shd_check(mesh, block, mcfg, name):
  from jshear import sharding as shd
  shd.validate_layout(mesh, block.batch_size, block.grad_accum, mcfg.num_heads, block=name)


def _distiller(cfg, student, source):
  """The continue stage's Distiller from configs alone (the planner reads no weights)."""
  from jshear import distill
  from jshear.model.config import compute_dtype
  from jshear.model_io import read_model_config as model_config
  from jshear.train.stages.common import resolve_source
  from jshear.train.stages.continued import DISTILL_SEED_OFFSET, teacher_items
  teachers = [("source", source, None, True) if item == "source" else
              (item, model_config(resolve_source(item)), None, False)
              for item in teacher_items(cfg, True)]
  import numpy as np
  kept = np.arange(student.hidden_size) if student.hidden_size != source.hidden_size else None
  return distill.build_setup(cfg.distill, student, teachers, steps=cfg.continued.steps,
                             seed=cfg.seed * 1000 + DISTILL_SEED_OFFSET,
                             compute_dtype=compute_dtype(cfg.model.compute_dtype),
                             kept_hidden=kept).distiller


def _per_device(tree) -> int:
  import jax
  import numpy as np
  return int(sum(np.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                 for x in jax.tree.leaves(tree)))


def plan_blockwise(cfg, mcfg, mesh, hbm_gb: float) -> dict:
  """The blockwise stage's plan: its one vmapped block step (`jshear.train.blocks`, as
  train_blocks compiles it) on a 1-D block mesh of the mesh's devices, at the shape the
  stages before it leave. Per device: the block states of its slots, one step's recorded
  streams, and XLA's temporaries."""
  import jax
  import jax.numpy as jnp
  from jshear.blockwise import device_assignment
  from jshear.model.params import init_params
  from jshear.train.blocks import block_layout, block_step, parallel_step
  from jshear.train.pipeline import prune_spec
  from jshear.train.step import init_state
  st = _stage(cfg, "blockwise")
  spec = prune_spec(cfg, mcfg) if cfg.prune.target.num_layers else None
  for before in _stages_before(cfg, st):
    mcfg = before.shape(cfg, mcfg, spec)
  b = cfg.blockwise
  step, opt, groups = block_step(mcfg, b, int(b.steps), b.mode, b.nmse_eps)
  n, devices = mcfg.num_layers, list(mesh.devices.flat)
  bmesh, shard, pad = block_layout(n, devices)
  layer = jax.eval_shape(lambda: jax.tree.map(
      lambda x: x[0], init_params(mcfg, jax.random.key(0))["layers"]))
  one = jax.eval_shape(lambda l: init_state(l, opt, 0, groups=groups), layer)
  stacked = lambda x: jax.ShapeDtypeStruct((n + pad, *x.shape), x.dtype, sharding=shard)  # noqa: E731
  state = jax.tree.map(stacked, one)
  B, T, D = int(b.batch_size), int(cfg.data.seq_len), mcfg.hidden_size
  rows = {k: jax.ShapeDtypeStruct((B, T), jnp.int32)
          for k in ("tokens", "segment_ids", "positions")}
  batch = jax.tree.map(stacked, {"x": jax.ShapeDtypeStruct((B, T, D), jnp.float32),
                                 "y": jax.ShapeDtypeStruct((B, T, D), jnp.float32), **rows})
  with jax.set_mesh(bmesh):
    compiled = parallel_step(step, shard).lower(state, batch).compile()
  temp_b = int(getattr(compiled.memory_analysis(), "temp_size_in_bytes", 0))
  params_b, opt_b = _per_device(state["params"]), _per_device(state["opt_state"])
  other_b = _per_device({k: v for k, v in state.items() if k not in ("params", "opt_state")})
  batch_b = _per_device(batch)
  total = params_b + opt_b + other_b + batch_b + temp_b
  gib = 1024 ** 3
  split = device_assignment(n, len(devices))
  return {
      "stage": "blockwise", "devices": len(devices), "mesh": {"block": len(devices)},
      "model": {"layers": n, "hidden": D, "heads": mcfg.num_heads,
                "params": int(mcfg.num_params())},
      "batch": [B, T], "mode": b.mode,
      "blocks_per_device": [len(x) for x in split], "padded_slots": pad,
      "per_device_gib": {"params": params_b / gib, "optimizer": opt_b / gib,
                         "counters": other_b / gib, "streams": batch_b / gib,
                         "activations_and_temps": temp_b / gib, "total": total / gib},
      "hbm_gib": hbm_gb, "fits": total <= hbm_gb * 1e9,
  }


def plan(cfg, stage: str, mcfg, mesh, hbm_gb: float) -> dict:
  import jax
  import numpy as np

  if stage == "blockwise":
    return plan_blockwise(cfg, mcfg, mesh, hbm_gb)

  built, block, mcfg = stage_plan(cfg, stage, mcfg, mesh)
  T = cfg.data.seq_len
  with jax.set_mesh(mesh):
    compiled = built.lower(block.batch_size, T, cfg.model.param_dtype).compile()
  inputs = built.abstract_inputs(block.batch_size, T, cfg.model.param_dtype)
  abstract_sh, teachers = inputs[0], (inputs[2] if len(inputs) > 2 else [])
  mem = compiled.memory_analysis()

  def per_device(tree):
    return int(sum(np.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
                   for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(
                       jax.tree.map(lambda x: x.sharding, tree)))))
  params_b = per_device(abstract_sh["params"])
  opt_b = per_device(abstract_sh["opt_state"])
  adapters_b = per_device(abstract_sh.get("lora", {}))  # LoRA: the trained adapters
  other_b = per_device({k: v for k, v in abstract_sh.items()
                        if k not in ("params", "opt_state", "lora")})
  teachers_b = per_device(teachers)  # distillation: the teachers' weights stay resident
  temp_b = int(getattr(mem, "temp_size_in_bytes", 0))
  total = params_b + opt_b + adapters_b + other_b + teachers_b + temp_b
  gib = 1024 ** 3
  return {
      "stage": stage, "devices": mesh.size, "mesh": dict(mesh.shape),
      "model": {"layers": mcfg.num_layers, "hidden": mcfg.hidden_size, "heads": mcfg.num_heads,
                "params": int(mcfg.num_params())},
      "batch": [block.batch_size, T], "grad_accum": block.grad_accum,
      "remat": mcfg.remat, "compute_dtype": cfg.model.compute_dtype,
      "lora_rank": built.lora.rank if built.lora else 0,
      "per_device_gib": {"params": params_b / gib, "optimizer": opt_b / gib,
                         "adapters": adapters_b / gib,
                         "prune_state_and_counters": other_b / gib,
                         "teachers": teachers_b / gib,
                         "activations_and_temps": temp_b / gib, "total": total / gib},
      "hbm_gib": hbm_gb, "fits": total <= hbm_gb * 1e9,
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jshear.train.plan", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True)
  p.add_argument("--stage", default="",
                 help="a training stage (pretrain, prune, continue); default: the config's "
                      "first training stage")
  p.add_argument("--devices", type=int, default=8)
  p.add_argument("--mesh", default="", help="e.g. data=1,fsdp=-1,tensor=1 (default: config)")
  p.add_argument("--source_shape", default="",
                 help=f"one of {sorted(SOURCE_SHAPES)}; default: model.source, else the "
                      f"config's model.source_shape")
  p.add_argument("--hbm_gb", type=float, default=80.0)
  p.add_argument("--set", action="append", default=[],
                 help="alias of --config.KEY=VALUE (python literal), e.g. prune.grad_accum=4")
  # --config.KEY=VALUE, as jshear.train takes it (the same override, one spelling).
  argv = sys.argv[1:] if argv is None else list(argv)
  argv = [f"--set={a[len('--config.'):]}" if a.startswith("--config.") else a for a in argv]
  args = p.parse_args(argv)
  # Fake devices must exist before jax starts.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}")
  os.environ["JAX_PLATFORMS"] = "cpu"
  from jshear import sharding as shd
  from jshear.errors import JShearError
  try:
    cfg = load_config(args.config, args.set)
    stage = args.stage or default_stage(cfg)
    if stage not in plannable(cfg):
      raise JShearError(f"--stage={stage!r} is not a training stage (training stages: "
                        f"{', '.join(plannable(cfg))})")
    mcfg = source_config(cfg, stage, args.source_shape)
    mesh_sizes = _parse_mesh(args.mesh) if args.mesh else dict(cfg.mesh.ici)
    mesh = shd.make_mesh(mesh_sizes)
    out = plan(cfg, stage, mcfg, mesh, args.hbm_gb)
  except JShearError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
