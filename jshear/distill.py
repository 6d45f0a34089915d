"""Knowledge distillation for continued pretraining: a logit-KL term from a teacher, mixed
with the LM loss, computed inside the same jitted train step.

Loss while distilling (step < first_fraction * steps):
  lm_weight * LM + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))
                 + hidden_weight * hidden-state loss
and plain LM afterwards. KL and LM are both means over the same predicted tokens of the
global batch (so a micro-batched step gives the same loss as one big batch).

Teachers: a list of models (default: the unpruned source). With several, one is drawn per
step from a seeded stream (`fold_in(seed, step)`), so the cost stays one teacher forward per
step and a resumed run draws the same teachers. Teacher params are inputs of the jitted
step, sharded like the student's (never baked into the compiled program), and receive no
gradient. A teacher must have the student's vocabulary size.

Hidden-state matching (optional, `hidden_layers`): the residual stream after chosen student
layers is matched to the teacher's at a mapped layer, loss = ||h_s - h_t||^2 / ||h_t||^2 per
token (relative, so a few huge channels, like SmolLM2's channel 507, do not swamp it). Sizes:
  * equal hidden sizes: compared as they are;
  * the student was pruned from this teacher: the teacher's residual stream is restricted to
    the channels the student kept (the pruning's `hidden` mask, a fixed 0/1 projection);
  * anything else is refused (no learned projection: it would add trainable parameters the
    exported model does not have).
Layer mapping: "s:t" pairs as given; a bare "s" maps to the teacher layer the student's layer
came from when the student was pruned from it (the `layer` mask), else to the layer at the same
relative depth, round((s + 1) * Lt / Ls) - 1.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.model.transformer import forward
from jshear.model.loss import token_targets


def kd_sum(student_logits, teacher_logits, weights, temperature: float):
  """T^2 * sum over weighted positions of KL(p_teacher || p_student) at temperature T.
  Logits [B, T, V] already aligned with `weights` [B, T]."""
  t = teacher_logits.astype(jnp.float32) / temperature
  s = student_logits.astype(jnp.float32) / temperature
  log_pt = jax.nn.log_softmax(t, axis=-1)
  log_ps = jax.nn.log_softmax(s, axis=-1)
  kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
  return temperature ** 2 * jnp.sum(kl * weights)


def hidden_sum(student_h, teacher_h, weights):
  """Sum over weighted tokens of ||h_s - h_t||^2 / ||h_t||^2, averaged over matched layers.
  student_h, teacher_h [K, B, T, D]; weights [B, T]."""
  s, t = student_h.astype(jnp.float32), teacher_h.astype(jnp.float32)
  rel = jnp.sum(jnp.square(s - t), -1) / jnp.maximum(jnp.sum(jnp.square(t), -1), 1e-6)
  return jnp.sum(jnp.mean(rel, axis=0) * weights)


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
  """One teacher's static side: config, the teacher layer for every matched student layer,
  and the teacher hidden channels that match the student's (None: all, sizes equal)."""
  cfg: ModelConfig
  layers: tuple = ()
  channels: tuple | None = None


def parse_hidden_layers(text: str, student_layers: int) -> list[tuple[int, int | None]]:
  """"3,7" or "3:5,7:11" -> [(student layer, teacher layer or None)]."""
  out = []
  for item in (s.strip() for s in str(text or "").split(",")):
    if not item:
      continue
    try:
      parts = [int(p) for p in item.split(":")]
    except ValueError:
      raise JShearError(f"distill.hidden_layers={text!r}: expected student layers like '3,7' "
                        "or student:teacher pairs like '3:5,7:11'") from None
    if len(parts) > 2:
      raise JShearError(f"distill.hidden_layers item {item!r}: at most one ':'")
    s = parts[0]
    if not 0 <= s < student_layers:
      raise JShearError(f"distill.hidden_layers: student layer {s} is out of range "
                        f"(student has {student_layers} layers)")
    out.append((s, parts[1] if len(parts) == 2 else None))
  return out


def teacher_spec(student: ModelConfig, teacher: ModelConfig, hidden_layers, *,
                 kept_layers=None, kept_hidden=None, name: str = "teacher") -> TeacherSpec:
  """Checks a teacher against the student and resolves layer mapping and channel projection.
  kept_layers / kept_hidden: the source indices the student kept, when it was pruned from
  this teacher (from the pruning masks), else None."""
  if teacher.vocab_size != student.vocab_size:
    raise JShearError(f"distillation teacher {name} has vocab_size={teacher.vocab_size} but the "
                      f"student has vocab_size={student.vocab_size}: logit KL needs one vocabulary")
  pairs = list(hidden_layers or ())
  if not pairs:
    return TeacherSpec(teacher)
  layers = []
  for s, t in pairs:
    if t is None:
      if kept_layers is not None and len(kept_layers) == student.num_layers:
        t = int(kept_layers[s])
      else:
        t = max(0, round((s + 1) * teacher.num_layers / student.num_layers) - 1)
    if not 0 <= t < teacher.num_layers:
      raise JShearError(f"distill.hidden_layers: teacher layer {t} is out of range ({name} has "
                        f"{teacher.num_layers} layers)")
    layers.append(t)
  channels = None
  if teacher.hidden_size != student.hidden_size:
    if kept_hidden is None or len(kept_hidden) != student.hidden_size:
      raise JShearError(
          f"distill.hidden_layers needs equal hidden sizes or a student pruned from the teacher: "
          f"{name} has hidden_size={teacher.hidden_size}, the student {student.hidden_size}, and "
          f"no pruning `hidden` mask relates them (clear distill.hidden_layers to distill logits "
          f"only)")
    channels = tuple(int(c) for c in kept_hidden)
  return TeacherSpec(teacher, tuple(layers), channels)


class Distiller:
  """The distillation term of a train step (see the module docstring). Static config only;
  teacher params come in as the step's third argument, a list in the order of `teachers`."""

  def __init__(self, student: ModelConfig, teachers: Sequence[TeacherSpec], *,
               weight: float = 1.0, lm_weight: float = 1.0, temperature: float = 1.0,
               stop_step: int | None = None, hidden_layers: Sequence[int] = (),
               hidden_weight: float = 1.0, seed: int = 0, compute_dtype=None):
    if not teachers:
      raise JShearError("distillation needs at least one teacher")
    if not temperature > 0:
      raise JShearError(f"distill.temperature must be positive, got {temperature}")
    for t in teachers:
      if t.cfg.vocab_size != student.vocab_size:
        raise JShearError(f"distillation teacher has vocab_size={t.cfg.vocab_size} but the "
                          f"student has vocab_size={student.vocab_size}")
      if len(t.layers) != len(hidden_layers):
        raise JShearError("every teacher needs one mapped layer per distill.hidden_layers entry")
    self.student, self.teachers = student, list(teachers)
    self.weight, self.lm_weight = float(weight), float(lm_weight)
    self.temperature, self.stop_step = float(temperature), stop_step
    self.hidden_layers = tuple(int(s) for s in hidden_layers)
    self.hidden_weight, self.seed, self.compute_dtype = float(hidden_weight), int(seed), compute_dtype

  @property
  def needs_hidden(self) -> bool:
    return bool(self.hidden_layers)

  def active(self, step):
    if self.stop_step is None:
      return jnp.bool_(True)
    return step < self.stop_step

  def lm_weight_at(self, step):
    return jnp.where(self.active(step), self.lm_weight, 1.0).astype(jnp.float32)

  def teacher_index(self, step):
    if len(self.teachers) == 1:
      return jnp.int32(0)
    key = jax.random.fold_in(jax.random.key(self.seed), step)
    return jax.random.randint(key, (), 0, len(self.teachers))

  def _teacher_out(self, i, params, mb):
    spec = self.teachers[i]
    out = forward(params, mb["tokens"], cfg=spec.cfg, positions=mb.get("positions"),
                  segment_ids=mb.get("segment_ids"), compute_dtype=self.compute_dtype,
                  return_hidden=self.needs_hidden)
    if not self.needs_hidden:
      return out, jnp.zeros((), jnp.float32)
    logits, hs = out
    hs = hs[jnp.asarray(spec.layers)]
    if spec.channels is not None:
      hs = hs[..., jnp.asarray(spec.channels)]
    return logits, hs.astype(jnp.float32)

  def loss(self, teacher_params, mb, logits, student_hidden, step, total_tokens,
           grad_accum: int = 1):
    """(loss to add for this micro-batch, metrics). Loss sums are divided by the global
    `total_tokens`, so summing over micro-batches gives the global mean; metrics are scaled
    by grad_accum so their mean over micro-batches is that global value too."""
    if len(teacher_params) != len(self.teachers):
      raise JShearError(f"Distiller has {len(self.teachers)} teachers but the step got "
                        f"{len(teacher_params)} teacher param trees")
    idx = self.teacher_index(step)
    _, weights = token_targets(mb)
    seg = mb.get("segment_ids")
    tok_w = (jnp.ones(mb["tokens"].shape, jnp.float32) if seg is None
             else (seg != 0).astype(jnp.float32))

    def on():
      branches = [lambda i=i: self._teacher_out(i, teacher_params[i], mb)
                  for i in range(len(self.teachers))]
      t_logits, t_hidden = (branches[0]() if len(branches) == 1
                            else jax.lax.switch(idx, branches))
      t_logits, t_hidden = jax.lax.stop_gradient((t_logits, t_hidden))
      kd = kd_sum(logits, t_logits, weights, self.temperature) / total_tokens
      hid = jnp.zeros((), jnp.float32)
      if self.needs_hidden:
        s_h = student_hidden[jnp.asarray(self.hidden_layers)]
        hid = hidden_sum(s_h, t_hidden, tok_w) / total_tokens
      return kd, hid

    off = lambda: (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    if self.stop_step is None:
      kd, hid = on()
    else:
      kd, hid = jax.lax.cond(self.active(step), on, off)
    total = self.weight * kd + self.hidden_weight * hid
    metrics = {"distill/kd": kd * grad_accum, "distill/teacher": idx.astype(jnp.float32),
               "distill/active": self.active(step).astype(jnp.float32)}
    if self.needs_hidden:
      metrics["distill/hidden"] = hid * grad_accum
    return total, metrics


# ---- wiring from a run config ---------------------------------------------------------

@dataclasses.dataclass
class Setup:
  """What the continue stage needs: the Distiller and the teachers' host params."""
  distiller: Distiller
  teacher_params: list


def stop_step(first_fraction: float, steps: int) -> int | None:
  if not 0 < first_fraction <= 1:
    raise JShearError(f"distill.first_fraction must be in (0, 1], got {first_fraction}")
  return None if first_fraction >= 1 else int(math.ceil(first_fraction * steps))


def teacher_paths(text: str) -> list[str]:
  """distill.teachers: comma-separated model dirs; "" or "source" means the unpruned source."""
  items = [s.strip() for s in str(text or "").split(",") if s.strip()]
  return items or ["source"]


def validate_config(dcfg, student: ModelConfig, teachers: list, *, steps: int) -> None:
  """Checks distill.* before any stage runs (errors otherwise surface only when the continue
  stage starts). teachers: [(name, cfg, is_source)]; `student` is the expected shape after
  pruning. A source teacher is assumed related to the student by the pruning masks."""
  stop_step(dcfg.first_fraction, steps)
  if not dcfg.temperature > 0:
    raise JShearError(f"distill.temperature must be positive, got {dcfg.temperature}")
  pairs = parse_hidden_layers(dcfg.hidden_layers, student.num_layers)
  for name, tcfg, is_source in teachers:
    related = np.arange(student.hidden_size) if is_source else None
    teacher_spec(student, tcfg, pairs, name=name, kept_hidden=related)


def build_setup(dcfg, student: ModelConfig, teachers: list, *, steps: int, seed: int,
                compute_dtype=None, kept_layers=None, kept_hidden=None) -> Setup:
  """teachers: [(name, cfg, host params, is_source)]. kept_*: the pruning's kept source
  indices (None when the student was not pruned in this run)."""
  pairs = parse_hidden_layers(dcfg.hidden_layers, student.num_layers)
  specs = []
  for name, tcfg, _, is_source in teachers:
    specs.append(teacher_spec(student, tcfg, pairs, name=name,
                              kept_layers=kept_layers if is_source else None,
                              kept_hidden=kept_hidden if is_source else None))
  d = Distiller(student, specs, weight=dcfg.weight, lm_weight=dcfg.lm_weight,
                temperature=dcfg.temperature, stop_step=stop_step(dcfg.first_fraction, steps),
                hidden_layers=[s for s, _ in pairs], hidden_weight=dcfg.hidden_weight,
                seed=seed, compute_dtype=compute_dtype)
  return Setup(d, [p for _, _, p, _ in teachers])


def put_teachers(setup: Setup, mesh, param_dtype):
  """Host teacher params -> global arrays sharded like a student of their shape; and those
  shardings (for the step's in_shardings)."""
  from jshear.model.params import abstract_params
  from jshear.model.state_sharding import param_shardings, put_global
  arrays, shardings = [], []
  for spec, p in zip(setup.distiller.teachers, setup.teacher_params):
    sh = param_shardings(spec.cfg, abstract_params(spec.cfg), mesh)
    arrays.append(put_global(jax.tree.map(lambda x: np.asarray(x, param_dtype), p), sh))
    shardings.append(sh)
  return arrays, shardings
