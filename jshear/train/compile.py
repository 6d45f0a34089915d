"""The one place a stage's train step is built and compiled: for the loop, the memory
planner and the benches alike.

`stage_step(ctx, stage, model_cfg, ...)` derives everything from the run config: the
declared optimizer groups and add-ons, the loss (LM, or LM + distillation when the stage
distils), the optimizer, the initial and abstract train state, its shardings, the batch
and teacher shardings, and the jitted step with donation. The loop calls the step; the
planner lowers the same object on abstract inputs (`StageStep.lower`), so what it compiles
is what the loop trains.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jshear import sharding as shd
from jshear.model.config import ModelConfig, compute_dtype
from jshear.model.masks import mask_shapes
from jshear.model.params import abstract_params
from jshear.model.state_sharding import param_shardings, state_shardings
from jshear.optim import build_optimizer, stage_span
from jshear.prune.state import init_prune_state
from jshear.train.adapters import LoraAddon
from jshear.train.context import Context, PruneSpec
from jshear.train.step import (init_state, lm_kd_loss, lm_loss, build_step, step_addons,
                               step_groups)

def micro_sharding(mesh):
  """Micro-batches [n, B/n, ...] keep the batch's row sharding."""
  return lambda nd: jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp"), *([None] * (nd - 2))))


@dataclasses.dataclass
class StageStep:
  """A stage's compiled-step plan. `step(state, batch[, teachers])` is jitted with the
  state donated; `make_state(params, prune_state)` builds the initial state. `lora`: the
  LoRA add-on when the stage trains adapters (None: it trains the weights)."""
  optimizer: object
  groups: tuple
  addons: tuple
  prune_state: object
  make_state: object
  abstract: dict
  shardings: dict
  batch_sharding: object
  teacher_shardings: object    # None without distillation
  teacher_cfgs: tuple
  step: object
  lora: object = None

  def abstract_inputs(self, batch_size: int, seq_len: int, param_dtype="float32"):
    """ShapeDtypeStructs (with shardings) of the step's arguments."""
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         self.abstract, self.shardings)
    batch = {k: jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32,
                                     sharding=self.batch_sharding)
             for k in ("tokens", "segment_ids", "positions")}
    args = (state, batch)
    if self.teacher_shardings is not None:
      teachers = [jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                               abstract_params(c, jnp.dtype(param_dtype)), sh)
                  for c, sh in zip(self.teacher_cfgs, self.teacher_shardings)]
      args += (teachers,)
    return args

  def lower(self, batch_size: int, seq_len: int, param_dtype="float32"):
    return self.step.lower(*self.abstract_inputs(batch_size, seq_len, param_dtype))


def stage_step(ctx: Context, stage, model_cfg: ModelConfig, prune: PruneSpec | None = None,
               mask_groups=None, init_log_alpha=None, distiller=None) -> StageStep:
  """`stage`: its declaration (jshear.train.stages.base.Stage). `prune`: learned masks'
  target (the state gets gates). `mask_groups`: iterative pruning keeps 0/1 masks of these
  groups in the state. `init_log_alpha`: a callable giving learned masks' starting logits
  (None: uniform). `distiller`: a jshear.distill.Distiller (teachers are the step's third
  argument, sharded like students of their shapes)."""
  cfg, mesh = ctx.cfg, ctx.mesh
  block = cfg[stage.block]
  pc = cfg.prune
  lora = LoraAddon.from_block(block)  # block.lora.rank > 0: adapters train, weights frozen
  addons = step_addons(gates=prune is not None, fixed_masks=bool(mask_groups),
                       warmup_steps=prune.warmup_steps if prune else 0,
                       size_control=pc.learned.size_control if prune else "lagrangian",
                       gate_forward=pc.learned.gate_forward if prune else "sample", lora=lora)
  groups = step_groups(addons)
  span = stage_span(cfg, stage.name, ctx.prune_trains)
  optimizer = build_optimizer(block, block.steps, groups, span)
  prune_state = None
  if prune is not None:
    prune_state = init_prune_state(model_cfg, prune.target, prune.groups,
                                   jax.random.key(cfg.seed + 17), prune.constraint,
                                   log_alpha=init_log_alpha() if init_log_alpha else None,
                                   bounds=tuple(pc.learned.log_alpha_bounds),
                                   binary_masks=pc.learned.gate_forward == "deterministic")
  fixed = None
  if mask_groups:
    shapes = mask_shapes(model_cfg)
    fixed = {g: np.ones(shapes[g], np.float32) for g in mask_groups}
  seed = stage.seed(cfg)

  def make_state(params, ps):
    extra = None
    if lora is not None:  # A from the stage's seed, B zero: step 0 is the base model
      extra = {"lora": lora.init(model_cfg, jax.random.fold_in(jax.random.key(seed), 7),
                                 jnp.dtype(cfg.model.param_dtype))}
    return init_state(params, optimizer, seed, ps, fixed, groups, extra)

  abstract = jax.eval_shape(
      make_state, abstract_params(model_cfg, jnp.dtype(cfg.model.param_dtype)), prune_state)
  shardings = state_shardings(model_cfg, abstract, mesh)
  dtype = compute_dtype(cfg.model.compute_dtype)
  loss = (lm_kd_loss(model_cfg, distiller, dtype) if distiller is not None
          else lm_loss(model_cfg, dtype))
  bsh = shd.batch_sharding(mesh)
  in_shardings = (shardings, bsh)
  t_sh, t_cfgs = None, ()
  if distiller is not None:
    t_cfgs = tuple(t.cfg for t in distiller.teachers)
    t_sh = [param_shardings(c, abstract_params(c), mesh) for c in t_cfgs]
    in_shardings += (t_sh,)
  fn = build_step(optimizer, loss, groups=groups, addons=addons, grad_accum=block.grad_accum,
                  micro_sharding=micro_sharding(mesh))
  step = jax.jit(fn, in_shardings=in_shardings, out_shardings=(shardings, shd.replicated(mesh)),
                 donate_argnums=0)
  return StageStep(optimizer, groups, addons, prune_state, make_state, abstract, shardings, bsh,
                   t_sh, t_cfgs, step, lora)
