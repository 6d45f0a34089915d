"""Learning-rate schedules, the train state's declared optimizer groups, and the optimizer.

A stage declares which state leaves train as `Group`s: a name, the state paths it owns, the
key holding its learning rate (a dotted path inside the stage block), and its sign. Only
declared leaves are in the trainable tree (`take`) and so in the optimizer state; everything
else in the state is frozen. The groups jshear uses:
  weights  ("params",)                  AdamW with the stage's schedule
  masks    ("prune", "log_alpha")       Adam at learned.mask_lr (learned mask logits)
  lambdas  ("prune", "lambda1"/"lambda2")  Adam at learned.lambda_lr, gradient *ascent* on
                                        the Lagrange multipliers
All Adam groups share the stage's b1, b2 and eps, as in the reference (one AdamW, weight
decay 0 on masks and lambdas). Reference-code side effects are options of the sub-block
holding the other groups' lr keys (prune.learned): `schedule_masks` scales their learning
rates by the weight schedule's shape (reference: yes); `clip_masks` includes them in
global-norm clipping (reference: yes); `settle_steps` > 0 (not the reference) scales them by a
linear fall to 0 at that step of the stage, so the gates settle and the weights then train
on the masks finalize will keep (0: off). A stage with only stage-lr groups (weights) reads
neither: its weights are clipped by clip_norm, as with clip_masks=True.
"""

from __future__ import annotations

import dataclasses

import jax
import optax

from jshear.config_check import SCHEDULES  # noqa: F401 (defined there, re-exported)
from jshear.errors import JShearError


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


@dataclasses.dataclass(frozen=True)
class Group:
  """One optimizer group: the train-state subtrees at `paths` (tuples of keys or field
  names), trained at the stage block's key `lr` (a dotted path: "learned.mask_lr");
  `ascent` climbs the gradient (the key's magnitude is the rate); `weight_decay` applies the
  block's decoupled weight decay."""
  name: str
  paths: tuple
  lr: str = "lr"
  ascent: bool = False
  weight_decay: bool = False


WEIGHTS = Group("weights", (("params",),), weight_decay=True)


def _get(node, key):
  return node[key] if isinstance(node, dict) else getattr(node, key)


def _set(node, key, value):
  if isinstance(node, dict):
    return {**node, key: value}
  return node.replace(**{key: value})  # a flax struct dataclass (PruneState)


def take(state: dict, groups) -> dict:
  """The trainable tree: the declared subtrees of `state`, nested by their state paths
  (e.g. {"params": ..., "prune": {"log_alpha": ...}}); frozen leaves are not in it."""
  out = {}
  for g in groups:
    for path in g.paths:
      node, sub = state, out
      for k in path[:-1]:
        node, sub = _get(node, k), sub.setdefault(k, {})
      if path[-1] in sub:
        raise ValueError(f"optimizer groups: state path {'.'.join(path)} is declared twice")
      sub[path[-1]] = _get(node, path[-1])
  return out


def put(state: dict, groups, tree: dict) -> dict:
  """`state` with the declared subtrees of `tree` (from `take`) written back at their paths."""
  def set_path(node, path, value):
    if len(path) == 1:
      return _set(node, path[0], value)
    return _set(node, path[0], set_path(_get(node, path[0]), path[1:], value))
  for g in groups:
    for path in g.paths:
      state = set_path(state, path, take_path(tree, path))
  return state


def take_path(tree, path):
  for k in path:
    tree = _get(tree, k)
  return tree


def labels(groups, tree: dict) -> dict:
  """The group name of every leaf of a trainable tree, from the declaration."""
  for g in groups:
    tree = put(tree, (g,), jax.tree.map(lambda _, name=g.name: name, take(tree, (g,))))
  return tree


def _at(block, path: str):
  """The value at dotted `path` inside config block `block` (KeyError naming it if absent)."""
  node = block
  for k in path.split("."):
    if k not in node:
      raise KeyError(f"optimizer group lr key {path!r}: no {k!r} in the stage block")
    node = node[k]
  return node


def _options(tc, groups) -> tuple[bool, bool, int]:
  """(schedule_masks, clip_masks, settle_steps) from the sub-block holding the non-stage-lr
  groups' lr keys ("learned.mask_lr" -> tc.learned; the reference's True, True, 0 where it
  has no such key, and when every group runs on `lr`)."""
  owners = {g.lr.rpartition(".")[0] for g in groups if g.lr != "lr"}
  if not owners:
    return True, True, 0
  if len(owners) > 1:
    raise ValueError(f"optimizer groups: lr keys in different sub-blocks {sorted(owners)}")
  (owner,) = owners
  sub = _at(tc, owner) if owner else tc
  return (bool(sub.get("schedule_masks", True)), bool(sub.get("clip_masks", True)),
          int(sub.get("settle_steps", 0)))


def build_optimizer(tc, total_steps: int, groups=(WEIGHTS,),
                    span: "Span | None" = None) -> optax.GradientTransformation:
  """The optimizer over `take(state, groups)`. tc: the stage's block (lr, schedule,
  warmup_steps, weight_decay, b1, b2, eps, clip_norm, each group's lr key and, next to the
  other groups' lr keys, schedule_masks and clip_masks). `span`: this stage's part of a
  schedule shared with another stage (`stage_span`)."""
  groups = tuple(groups)
  names = [g.name for g in groups]
  if len(set(names)) != len(names) or not groups:
    raise ValueError(f"optimizer groups must be non-empty with distinct names, got {names}")
  schedule_masks, clip_masks, settle_steps = _options(tc, groups)
  clip = optax.clip_by_global_norm(tc.clip_norm) if tc.clip_norm > 0 else optax.identity()
  # The weight schedule's shape at peak 1, so a stage with lr=0 still scales other groups.
  shape = schedule_fn(tc, total_steps, span, peak=1.0)

  def group_lr(g):
    if g.lr == "lr":  # the stage's own schedule
      return schedule_fn(tc, total_steps, span)
    rate = float(_at(tc, g.lr))
    lr = -abs(rate) if g.ascent else rate
    settle = (optax.linear_schedule(1.0, 0.0, settle_steps) if settle_steps > 0
              else (lambda step: 1.0))
    if schedule_masks:
      return lambda step: lr * shape(step) * settle(step)
    if settle_steps > 0:
      return lambda step: lr * settle(step)
    return lr

  def transform(g):
    if g.weight_decay:
      t = optax.adamw(group_lr(g), b1=tc.b1, b2=tc.b2, eps=tc.eps, weight_decay=tc.weight_decay)
    else:
      t = optax.adam(group_lr(g), b1=tc.b1, b2=tc.b2, eps=tc.eps)
    # clip_masks=False (not the reference): only the stage-lr groups are clipped, alone.
    return t if clip_masks or g.lr != "lr" else optax.chain(clip, t)

  opt = optax.multi_transform({g.name: transform(g) for g in groups},
                              lambda tree: labels(groups, tree))
  return optax.chain(clip, opt) if clip_masks else opt


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
