"""The one train-step builder for every stage.

State is a plain dict pytree:
  step, params, opt_state, rng (raw key data), skipped, bad_streak, and `prune` (a
  PruneState) only in the learned-mask pruning stage, or `masks` (fixed 0/1 masks the loop
  replaces between steps) and `mask_ste` (their straight-through gradient weight) in
  iterative pruning (DimCHOP, gradual LayerCHOP).
Loss = LM loss (+ the Lagrangian when `prune` is present) (+ distillation from teachers
passed as the step's third argument, see
`jshear.distill`). Gradients are accumulated over micro-batches with `lax.scan`;
a non-finite loss or gradient leaves the state unchanged and is counted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jshear.model.config import ModelConfig
from jshear.model.transformer import forward
from jshear.prune.lagrangian import lagrangian, target_sparsity
from jshear.prune.projection import project
from jshear.prune.state import sample_masks, straight_through_masks
from jshear.train.loss import nll_sum, per_row_nll, token_targets

SIZE_CONTROLS = ("lagrangian", "projection")
# What the learned gates put in the training forward: a hard-concrete sample (reference) or
# the deterministic masks with straight-through gradients (`straight_through_masks`).
GATE_FORWARDS = ("sample", "deterministic")



def _trainable(state):
  return {k: state[k] for k in ("params", "prune") if k in state}


def init_state(params, optimizer, seed: int, prune=None, masks=None) -> dict:
  state = {"step": jnp.zeros((), jnp.int32), "params": params,
           "rng": jax.random.key_data(jax.random.key(seed)),
           "skipped": jnp.zeros((), jnp.int32), "bad_streak": jnp.zeros((), jnp.int32)}
  if prune is not None:
    state["prune"] = prune
  if masks is not None:
    state["masks"] = {g: jnp.asarray(m, jnp.float32) for g, m in masks.items()}
    state["mask_ste"] = jnp.zeros((), jnp.float32)
  state["opt_state"] = optimizer.init(_trainable(state))
  return state


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


def make_train_step(cfg: ModelConfig, optimizer: optax.GradientTransformation, *,
                    grad_accum: int = 1, compute_dtype=None, prune_warmup_steps: int = 0,
                    micro_sharding=None, distill=None, size_control: str = "lagrangian",
                    gate_forward: str = "sample"):
  """Returns step(state, batch) -> (state, metrics). Batch: tokens, segment_ids, positions
  [B, T] (domain etc. are ignored). With `distill` (a `jshear.distill.Distiller`) the step
  is step(state, batch, teachers), teachers a list of teacher param trees.
  `size_control` (learned masks): "lagrangian" adds the penalty and trains the multipliers;
  "projection" shifts the gate logits to the warmed-up target after every update
  (`jshear.prune.projection`) and leaves the penalty out. `gate_forward`: see GATE_FORWARDS."""
  if size_control not in SIZE_CONTROLS:
    raise ValueError(f"size_control must be one of {SIZE_CONTROLS}, got {size_control!r}")
  if gate_forward not in GATE_FORWARDS:
    raise ValueError(f"gate_forward must be one of {GATE_FORWARDS}, got {gate_forward!r}")

  def micro_loss(trainable, mb, step, micro, mask_rng, total_tokens, teachers, fixed):
    masks, ste = fixed if fixed is not None else (None, None)
    if "prune" in trainable and gate_forward == "deterministic":
      masks = straight_through_masks(trainable["prune"])
    elif "prune" in trainable:  # a fresh gate sample per micro-batch (per forward pass)
      masks = sample_masks(trainable["prune"], mask_rng, step, micro)
    want_hidden = distill is not None and distill.needs_hidden
    out = forward(trainable["params"], mb["tokens"], masks, cfg=cfg,
                  positions=mb.get("positions"), segment_ids=mb.get("segment_ids"),
                  compute_dtype=compute_dtype, return_hidden=want_hidden, mask_ste=ste)
    logits, hidden = out if want_hidden else (out, None)
    nll, _ = nll_sum(logits, mb)
    loss, metrics = nll / total_tokens, {}
    if distill is not None:  # the LM weight may differ while distilling
      loss = distill.lm_weight_at(step) * loss
    if distill is not None:
      extra, m = distill.loss(teachers, mb, logits, hidden, step, total_tokens, grad_accum)
      loss, metrics = loss + extra, {**metrics, **m}
    return loss, (nll, metrics)

  def step_fn(state, batch, teachers=None):
    step, trainable = state["step"], _trainable(state)
    mask_rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), 1)
    batch = {k: batch[k] for k in ("tokens", "segment_ids", "positions") if k in batch}
    _, weights = token_targets(batch)
    total_tokens = jnp.maximum(jnp.sum(weights), 1.0)
    micro = split_micro(batch, grad_accum, micro_sharding)
    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
    fixed = (state["masks"], state["mask_ste"]) if "masks" in state else None

    def accumulate(carry, xs):
      g_acc, nll_acc = carry
      mb, i = xs
      (_, (nll, m)), g = grad_fn(trainable, mb, step, i, mask_rng, total_tokens, teachers,
                                 fixed)
      return (jax.tree.map(jnp.add, g_acc, g), nll_acc + nll), m

    zeros = jax.tree.map(jnp.zeros_like, trainable)
    (grads, nll), extra_m = jax.lax.scan(accumulate, (zeros, jnp.float32(0.0)),
                                         (micro, jnp.arange(grad_accum)))
    metrics = {"lm_loss": nll / total_tokens, "tokens": total_tokens}
    metrics.update(jax.tree.map(jnp.mean, extra_m))
    loss = metrics["lm_loss"]
    if "prune" in trainable:
      if size_control == "lagrangian":
        (penalty, diag), g_pen = jax.value_and_grad(
            lambda p: lagrangian(p, step, prune_warmup_steps), has_aux=True)(trainable["prune"])
        grads["prune"] = jax.tree.map(jnp.add, grads["prune"], g_pen)
        loss = loss + penalty
        metrics["lagrangian"] = penalty
      else:  # projection: the diagnostics only, no penalty gradient to compute
        _, diag = lagrangian(trainable["prune"], step, prune_warmup_steps)
      metrics.update(diag)

    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(_):
      updates, new_opt = optimizer.update(grads, state["opt_state"], trainable)
      new_tr = optax.apply_updates(trainable, updates)
      if "prune" in new_tr:
        # Reference choice: keep log_alpha in [ln 0.01, ln 100] after every update (what
        # the clamp cuts off is kept as clamp_excess, for ranking).
        new_tr["prune"] = new_tr["prune"].clamped(new_tr["prune"].log_alpha)
        if size_control == "projection":  # sizes of the next step's target, exactly
          new_tr["prune"] = project(new_tr["prune"], target_sparsity(
              new_tr["prune"], step + 1, prune_warmup_steps))
      return new_tr, new_opt

    # A skipped step leaves params and optimizer state as they were. A cond rather than a
    # select over the updated trees: the select was one more pass over 3x the params
    # (~0.15 s of a 6.8 s SmolLM2 CPU step, measured A/B in one process).
    new_tr, new_opt = jax.lax.cond(ok, update, lambda _: (trainable, state["opt_state"]), None)
    new_state = dict(state)
    new_state.update(new_tr)
    new_state["opt_state"] = new_opt
    new_state["step"] = step + 1
    new_state["skipped"] = state["skipped"] + (~ok).astype(jnp.int32)
    new_state["bad_streak"] = jnp.where(ok, 0, state["bad_streak"] + 1)
    metrics.update(loss=loss, grad_norm=grad_norm, skipped=new_state["skipped"],
                   bad_streak=new_state["bad_streak"])
    return new_state, metrics

  return step_fn


def make_eval_step(cfg: ModelConfig, compute_dtype=None):
  """eval(params, masks, batch) -> per-row (nll sum, token count), for per-domain losses."""
  def eval_fn(params, masks, batch):
    logits = forward(params, batch["tokens"], masks, cfg=cfg, positions=batch.get("positions"),
                     segment_ids=batch.get("segment_ids"), compute_dtype=compute_dtype)
    return per_row_nll(logits, batch)
  return eval_fn
