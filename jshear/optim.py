"""Learning-rate schedules and the optimizer over {"params", "prune"}.

Groups through `optax.multi_transform`:
  weights    AdamW with the schedule
  log_alpha  Adam at its own learning rate (mask logits)
  lambdas    Adam at a *negative* learning rate: optax subtracts lr * update, so lr < 0 moves
             along the gradient, i.e. gradient ascent on the Lagrange multipliers.
  frozen     the prune state's bookkeeping (clamp_excess, start_sparsity): never changed by the optimizer.
All Adam groups share the run's b1, b2 and eps, as in the reference (one AdamW, weight
decay 0 on masks and lambdas).
Reference-code side effects are options: `schedule_masks` scales the mask/lambda learning
rates by the weight schedule (reference: yes); `clip_masks` includes masks and lambdas in
global-norm clipping (reference: yes).
"""

from __future__ import annotations

import dataclasses

import jax
import optax

from jshear.errors import JShearError

SCHEDULES = ("cosine", "linear", "constant", "wsd")


def make_schedule(kind: str, peak: float, total_steps: int, warmup_steps: int,
                  final_fraction: float = 0.1, decay_fraction: float = 0.2):
  """cosine/linear: warmup then decay to final_fraction * peak; wsd: warmup, stable at
  peak, then linear decay over the last `decay_fraction` of steps; constant: warmup then flat."""
  if kind not in SCHEDULES:
    raise JShearError(f"train.schedule must be one of {SCHEDULES}, got {kind!r}")
  total_steps = max(int(total_steps), 1)
  warmup_steps = min(int(warmup_steps), total_steps)
  end = peak * final_fraction
  warm = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
  rest = max(total_steps - warmup_steps, 1)
  if kind == "cosine":
    decay = optax.cosine_decay_schedule(peak, rest, alpha=final_fraction)
  elif kind == "linear":
    decay = optax.linear_schedule(peak, end, rest)
  elif kind == "constant":
    decay = optax.constant_schedule(peak)
  else:
    n_decay = max(int(round(total_steps * decay_fraction)), 1)
    stable = max(rest - n_decay, 0)
    decay = optax.join_schedules(
        [optax.constant_schedule(peak), optax.linear_schedule(peak, end, n_decay)], [stable])
  if warmup_steps == 0:
    return decay
  return optax.join_schedules([warm, decay], [warmup_steps])


def _label(path, _):
  keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
  if keys[0] == "params":
    return "weights"
  if "clamp_excess" in keys or "start_sparsity" in keys:
    return "frozen"
  return "masks" if "log_alpha" in keys else "lambdas"


def build_optimizer(tc, total_steps: int, has_prune: bool,
                    span: "Span | None" = None) -> optax.GradientTransformation:
  """tc: the `train` config block (lr, schedule, warmup_steps, weight_decay, b1, b2, eps,
  clip_norm, mask_lr, lambda_lr, schedule_masks, clip_masks). `span`: this stage's part of
  a schedule shared with another stage (`stage_span`)."""
  sched = schedule_fn(tc, total_steps, span)
  weights = optax.adamw(sched, b1=tc.b1, b2=tc.b2, eps=tc.eps, weight_decay=tc.weight_decay)
  clip = optax.clip_by_global_norm(tc.clip_norm) if tc.clip_norm > 0 else optax.identity()
  if not has_prune:
    return optax.chain(clip, weights)

  # The weight schedule's shape at peak 1, so a stage with lr=0 still scales these groups.
  shape = schedule_fn(tc, total_steps, span, peak=1.0)

  def group_lr(lr):
    if tc.schedule_masks:
      return lambda step: lr * shape(step)
    return lr

  adam = lambda lr: optax.adam(group_lr(lr), b1=tc.b1, b2=tc.b2, eps=tc.eps)
  groups = {
      "weights": weights if tc.clip_masks else optax.chain(clip, weights),
      "masks": adam(tc.mask_lr),
      "lambdas": adam(tc.lambda_lr),
      "frozen": optax.set_to_zero(),
  }
  labels = lambda tree: jax.tree_util.tree_map_with_path(_label, tree)
  opt = optax.multi_transform(groups, labels)
  return optax.chain(clip, opt) if tc.clip_masks else opt


@dataclasses.dataclass(frozen=True)
class Span:
  """A stage's part of one schedule over several stages: the stage runs the schedule's
  steps [offset, offset + its steps) of `total`; `base` is the block whose lr, schedule,
  warmup_steps and final_lr_fraction define it. A stage entering at offset > 0 starts a
  fresh optimizer, so its own warmup_steps ramp it up to the schedule's value there."""
  offset: int
  total: int
  base: object


def stage_span(cfg, name: str, trains_in_prune: bool) -> Span | None:
  """The shared schedule of `prune.one_schedule` for stage `name` (None: its own)."""
  if not cfg.prune.get("one_schedule", False) or not trains_in_prune:
    return None
  total = int(cfg.prune.steps) + int(cfg.continued.steps)
  if name == "prune":
    return Span(0, total, cfg.prune)
  if name == "continue":
    return Span(int(cfg.prune.steps), total, cfg.prune)
  return None


def check_one_schedule(cfg) -> None:
  """prune.one_schedule runs both stages on prune's lr and schedule: a continued block
  that says otherwise is refused rather than ignored."""
  if not cfg.prune.get("one_schedule", False):
    return
  for key in ("lr", "schedule", "final_lr_fraction"):
    if cfg.continued[key] != cfg.prune[key]:
      raise JShearError(f"prune.one_schedule=True runs the continue stage on the pruning "
                        f"stage's schedule, but continued.{key}={cfg.continued[key]!r} differs "
                        f"from prune.{key}={cfg.prune[key]!r}; set them equal")


def schedule_fn(tc, total_steps: int, span: Span | None = None, peak: float | None = None):
  """The learning rate of stage block `tc` by step (peak: tc.lr unless given)."""
  peak = tc.lr if peak is None else peak
  if span is None:
    return make_schedule(tc.schedule, peak, total_steps, tc.warmup_steps, tc.final_lr_fraction,
                         tc.get("decay_fraction", 0.2))
  b = span.base
  whole = make_schedule(b.schedule, peak, span.total, b.warmup_steps, b.final_lr_fraction,
                        b.get("decay_fraction", 0.2))
  if span.offset == 0 or not tc.warmup_steps:
    return lambda step: whole(step + span.offset)
  ramp = optax.linear_schedule(0.0, 1.0, int(tc.warmup_steps))
  return lambda step: whole(step + span.offset) * ramp(step)
