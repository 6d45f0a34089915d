"""Learned gates as an add-on of the train step (the Sheared-LLaMA pruning stage).

The step builder knows nothing of pruning: it asks each add-on for the masks of the
forward, an extra whole-step loss term, and what to do to the state after an update. For
learned masks those are the gate sample (or the straight-through deterministic masks), the
Lagrangian, and the clamp plus, under size_control=projection, the projection to the
target. The add-on also declares its optimizer groups: the mask logits, and the Lagrange
multipliers only when the Lagrangian trains them.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jshear.config_check import GATE_FORWARDS, SIZE_CONTROLS
from jshear.optim import Group
from jshear.prune.lagrangian import lagrangian, target_sparsity
from jshear.prune.projection import project
from jshear.prune.state import sample_masks, straight_through_masks

# prune.learned.size_control and prune.learned.gate_forward (a hard-concrete sample, the
# reference, or the deterministic masks with straight-through gradients) are defined once,
# in config_check.

MASKS = Group("masks", (("prune", "log_alpha"),), lr="learned.mask_lr")
LAMBDAS = Group("lambdas", (("prune", "lambda1"), ("prune", "lambda2")), lr="learned.lambda_lr",
                ascent=True)


@dataclasses.dataclass(frozen=True)
class LearnedGates:
  """state["prune"] (a PruneState) drives the forward's masks. `warmup_steps`: steps over
  which the target sparsity warms up from the start (prune.learned.target_warmup_steps)."""
  warmup_steps: int = 0
  size_control: str = "lagrangian"
  gate_forward: str = "sample"

  def __post_init__(self):
    if self.size_control not in SIZE_CONTROLS:
      raise ValueError(f"size_control must be one of {SIZE_CONTROLS}, got {self.size_control!r}")
    if self.gate_forward not in GATE_FORWARDS:
      raise ValueError(f"gate_forward must be one of {GATE_FORWARDS}, got {self.gate_forward!r}")

  @property
  def groups(self) -> tuple:
    # Under projection the multipliers get no gradient: they are frozen, not trained at 0.
    return (MASKS, LAMBDAS) if self.size_control == "lagrangian" else (MASKS,)

  def masks(self, state, rng, step, micro):
    """(masks, None) for micro-batch `micro` of step `step` (one sample per forward)."""
    if self.gate_forward == "deterministic":
      return straight_through_masks(state["prune"]), None
    return sample_masks(state["prune"], rng, step, micro), None

  @property
  def step_loss_trains(self) -> bool:
    """Whether `step_loss` is differentiated (the Lagrangian) or only reported."""
    return self.size_control == "lagrangian"

  def step_loss(self, state, step):
    """(term added to the step's loss once, its metrics)."""
    penalty, diag = lagrangian(state["prune"], step, self.warmup_steps)
    if self.step_loss_trains:
      return penalty, {"lagrangian": penalty, **diag}
    return jnp.float32(0.0), diag  # projection: the diagnostics only

  def post_update(self, state, step):
    ps = state["prune"]
    # Reference choice: keep log_alpha in the bounds after every update (what the clamp
    # cuts off is kept as clamp_excess, for ranking).
    ps = ps.clamped(ps.log_alpha)
    if self.size_control == "projection":  # sizes of the next step's target, exactly
      ps = project(ps, target_sparsity(ps, step + 1, self.warmup_steps))
    return {**state, "prune": ps}


@dataclasses.dataclass(frozen=True)
class FixedMasks:
  """Iterative pruning (DimCHOP, gradual LayerCHOP): state["masks"] are 0/1 masks the loop
  replaces between steps, state["mask_ste"] their straight-through gradient weight. Nothing
  here trains."""
  groups: tuple = ()

  def masks(self, state, rng, step, micro):
    return state["masks"], state["mask_ste"]

  step_loss_trains = False

  def step_loss(self, state, step):
    return None

  def post_update(self, state, step):
    return state
