"""The one train-step builder for every stage.

A stage's step is `build_step(optimizer, loss, groups, addons)`:
  loss    loss(state, micro_batch, inputs) -> (loss, (nll sum, metrics)), a small function
          per objective (`lm_loss`, `lm_kd_loss`; later blockwise and adapter losses);
  groups  the declared optimizer groups (`jshear.optim.Group`): only their leaves are
          differentiated and updated, and only they are in the optimizer state;
  addons  what rides on the state besides the weights: each gives the forward's masks
          (`masks`), an optional whole-step loss term (`step_loss`, differentiated when
          `step_loss_trains`) and a `post_update`;
          e.g. learned gates (`jshear.prune.gates.LearnedGates`: sample, Lagrangian, clamp
          and projection) or the fixed masks of iterative pruning (`FixedMasks`); an
          add-on may instead give the forward's LoRA adapters (`adapters`) and freeze the
          weights (`freezes_weights`: `jshear.train.adapters.LoraAddon`).
State is a plain dict pytree: step, params, opt_state, rng (raw key data), skipped,
bad_streak, and what the add-ons keep (`prune`: a PruneState; `masks`, `mask_ste`; `lora`).
Gradients are accumulated over micro-batches with `lax.scan`; a non-finite loss or
gradient leaves the state unchanged and is counted. Teachers (distillation) come in as the
step's third argument.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jshear.model.config import ModelConfig
from jshear.model.loss import nll_sum, row_nll, token_targets
from jshear.model.transformer import forward
from jshear.optim import WEIGHTS, put, take
from jshear.prune.gates import GATE_FORWARDS, SIZE_CONTROLS, FixedMasks, LearnedGates  # noqa: F401


def init_state(params, optimizer, seed: int, prune=None, masks=None, groups=(WEIGHTS,),
               extra=None) -> dict:
  """A fresh train state; the optimizer state covers only the leaves of `groups`.
  `extra`: further add-on pytrees by state key (e.g. adapters)."""
  state = {"step": jnp.zeros((), jnp.int32), "params": params,
           "rng": jax.random.key_data(jax.random.key(seed)),
           "skipped": jnp.zeros((), jnp.int32), "bad_streak": jnp.zeros((), jnp.int32)}
  if prune is not None:
    state["prune"] = prune
  if masks is not None:
    state["masks"] = {g: jnp.asarray(m, jnp.float32) for g, m in masks.items()}
    state["mask_ste"] = jnp.zeros((), jnp.float32)
  state.update(extra or {})
  state["opt_state"] = optimizer.init(take(state, groups))
  return state


BATCH_KEYS = ("tokens", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What a loss function gets besides the state and the micro-batch."""
  step: object            # the training step (traced)
  total_tokens: object    # predicted tokens in the whole batch (losses divide by it)
  masks: object = None    # the forward's masks (None: the plain model)
  mask_ste: object = None
  teachers: object = None
  grad_accum: int = 1
  adapters: object = None  # the forward's LoRA adapters (jshear.model.lora.Adapters)


def split_micro(batch: dict, n: int, micro_sharding=None) -> dict:
  """[B, ...] -> [n, B/n, ...] taking every n-th row, so each micro-batch keeps the batch
  sharding (rows stay on the device that holds them)."""
  def one(x):
    B = x.shape[0]
    x = x.reshape((B // n, n) + x.shape[1:]).swapaxes(0, 1)
    if micro_sharding is not None:
      x = jax.lax.with_sharding_constraint(x, micro_sharding(x.ndim))
    return x
  return {k: one(v) for k, v in batch.items()}


def lm_loss(cfg: ModelConfig, compute_dtype=None):
  """Next-token loss of the (masked) model."""
  def loss(state, mb, inp: Inputs):
    logits = forward(state["params"], mb["tokens"], inp.masks, cfg=cfg,
                     positions=mb.get("positions"), segment_ids=mb.get("segment_ids"),
                     compute_dtype=compute_dtype, mask_ste=inp.mask_ste, adapters=inp.adapters)
    nll, _ = nll_sum(logits, mb)
    return nll / inp.total_tokens, (nll, {})
  return loss


def lm_kd_loss(cfg: ModelConfig, distill, compute_dtype=None):
  """Next-token loss (weighted while distilling) plus the distillation term from the
  teachers (`jshear.distill.Distiller`)."""
  def loss(state, mb, inp: Inputs):
    out = forward(state["params"], mb["tokens"], inp.masks, cfg=cfg,
                  positions=mb.get("positions"), segment_ids=mb.get("segment_ids"),
                  compute_dtype=compute_dtype, return_hidden=distill.needs_hidden,
                  mask_ste=inp.mask_ste, adapters=inp.adapters)
    logits, hidden = out if distill.needs_hidden else (out, None)
    nll, _ = nll_sum(logits, mb)
    lm = distill.lm_weight_at(inp.step) * (nll / inp.total_tokens)
    extra, metrics = distill.loss(inp.teachers, mb, logits, hidden, inp.step, inp.total_tokens,
                                  inp.grad_accum)
    return lm + extra, (nll, metrics)
  return loss


def build_step(optimizer: optax.GradientTransformation, loss, *, groups=(WEIGHTS,), addons=(),
               grad_accum: int = 1, micro_sharding=None, batch_keys=BATCH_KEYS):
  """Returns step(state, batch[, teachers]) -> (state, metrics). Batch: tokens,
  segment_ids, positions [B, T], plus the further `batch_keys` the loss reads (blockwise
  distillation's recorded streams); other keys are ignored."""
  groups = tuple(groups)
  mask_addons = [a for a in addons if hasattr(a, "masks")]
  if len(mask_addons) > 1:
    raise ValueError("at most one add-on may give the forward's masks")
  adapter_addons = [a for a in addons if hasattr(a, "adapters")]
  if len(adapter_addons) > 1:
    raise ValueError("at most one add-on may give the forward's adapters")

  def step_fn(state, batch, teachers=None):
    step = state["step"]
    trainable = take(state, groups)
    mask_rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), 1)
    adapter_rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), 2)
    batch = {k: batch[k] for k in batch_keys if k in batch}
    _, weights = token_targets(batch)
    total_tokens = jnp.maximum(jnp.sum(weights), 1.0)
    micro = split_micro(batch, grad_accum, micro_sharding)

    def micro_loss(tr, mb, i):
      view = put(state, groups, tr)
      masks, ste = (mask_addons[0].masks(view, mask_rng, step, i) if mask_addons
                    else (None, None))
      adapters = (adapter_addons[0].adapters(view, adapter_rng, step, i) if adapter_addons
                  else None)
      return loss(view, mb, Inputs(step, total_tokens, masks, ste, teachers, grad_accum,
                                   adapters))

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def accumulate(carry, xs):
      g_acc, nll_acc = carry
      mb, i = xs
      (_, (nll, m)), g = grad_fn(trainable, mb, i)
      return (jax.tree.map(jnp.add, g_acc, g), nll_acc + nll), m

    zeros = jax.tree.map(jnp.zeros_like, trainable)
    (grads, nll), extra_m = jax.lax.scan(accumulate, (zeros, jnp.float32(0.0)),
                                         (micro, jnp.arange(grad_accum)))
    metrics = {"lm_loss": nll / total_tokens, "tokens": total_tokens}
    metrics.update(jax.tree.map(jnp.mean, extra_m))
    loss_value = metrics["lm_loss"]
    for a in addons:  # whole-step terms (the Lagrangian), once per step
      if a.step_loss_trains:  # value and gradient in one pass
        (value, m), g = jax.value_and_grad(
            lambda tr, a=a: a.step_loss(put(state, groups, tr), step), has_aux=True)(trainable)
        grads = jax.tree.map(jnp.add, grads, g)
      else:
        out = a.step_loss(state, step)
        if out is None:
          continue
        value, m = out
      loss_value = loss_value + value
      metrics.update(m)

    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss_value) & jnp.isfinite(grad_norm)

    def update(_):
      updates, new_opt = optimizer.update(grads, state["opt_state"], trainable)
      new = put(state, groups, optax.apply_updates(trainable, updates))
      for a in addons:
        new = a.post_update(new, step)
      return new, new_opt

    # A skipped step leaves the state and optimizer state as they were. A cond rather than
    # a select over the updated trees: the select was one more pass over 3x the params
    # (~0.15 s of a 6.8 s SmolLM2 CPU step, measured A/B in one process).
    new_state, new_opt = jax.lax.cond(ok, update, lambda _: (state, state["opt_state"]), None)
    new_state = dict(new_state)
    new_state["opt_state"] = new_opt
    new_state["step"] = step + 1
    new_state["skipped"] = state["skipped"] + (~ok).astype(jnp.int32)
    new_state["bad_streak"] = jnp.where(ok, 0, state["bad_streak"] + 1)
    metrics.update(loss=loss_value, grad_norm=grad_norm, skipped=new_state["skipped"],
                   bad_streak=new_state["bad_streak"])
    return new_state, metrics

  return step_fn


def make_train_step(cfg: ModelConfig, optimizer: optax.GradientTransformation, *,
                    grad_accum: int = 1, compute_dtype=None, prune_warmup_steps: int = 0,
                    micro_sharding=None, distill=None, size_control: str = "lagrangian",
                    gate_forward: str = "sample", gates: bool = False,
                    fixed_masks: bool = False):
  """`build_step` for the stages jshear ships: the LM loss (+ distillation from
  `distill`, a `jshear.distill.Distiller`), the weights, plus learned gates (`gates`, with
  `size_control` and `gate_forward`, see jshear.prune.gates) or fixed masks
  (`fixed_masks`). The optimizer must cover the same groups (`step_groups`)."""
  addons = step_addons(gates, fixed_masks, prune_warmup_steps, size_control, gate_forward)
  loss = (lm_kd_loss(cfg, distill, compute_dtype) if distill is not None
          else lm_loss(cfg, compute_dtype))
  return build_step(optimizer, loss, groups=step_groups(addons), addons=addons,
                    grad_accum=grad_accum, micro_sharding=micro_sharding)


def step_addons(gates: bool = False, fixed_masks: bool = False, warmup_steps: int = 0,
                size_control: str = "lagrangian", gate_forward: str = "sample",
                lora=None) -> tuple:
  """`lora`: a `jshear.train.adapters.LoraAddon` (None: the weights train)."""
  out = ()
  if gates:
    out = (LearnedGates(warmup_steps, size_control, gate_forward),)
  elif fixed_masks:
    out = (FixedMasks(),)
  return out + ((lora,) if lora is not None else ())


def step_groups(addons=()) -> tuple:
  """The weights (unless an add-on freezes them) plus each add-on's declared groups."""
  frozen = any(getattr(a, "freezes_weights", False) for a in addons)
  return (() if frozen else (WEIGHTS,)) + tuple(g for a in addons for g in a.groups)


def make_eval_step(cfg: ModelConfig, compute_dtype=None):
  """eval(params, masks, batch) -> per-row (nll sum, token count), for per-domain losses."""
  def eval_fn(params, masks, batch):
    return row_nll(params, batch, cfg=cfg, masks=masks, compute_dtype=compute_dtype)
  return eval_fn
