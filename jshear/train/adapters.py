"""LoRA as an add-on of the train step: the adapters ride on the state at `state["lora"]`,
are the one declared trainable group, and reach the forward through `Inputs.adapters`. The
weights are frozen: not differentiated, not updated, not in the optimizer state."""

from __future__ import annotations

import dataclasses

import jax

from jshear.model import lora
from jshear.optim import Group

ADAPTERS = Group("adapters", (("lora",),), weight_decay=True)  # the stage's lr and schedule


@dataclasses.dataclass(frozen=True)
class LoraAddon:
  """rank, alpha, targets (a tuple of lora.TARGETS), dropout: the stage block's `lora`."""
  rank: int
  alpha: float
  targets: tuple
  dropout: float = 0.0

  groups = (ADAPTERS,)
  freezes_weights = True
  step_loss_trains = False

  @classmethod
  def from_block(cls, block) -> "LoraAddon | None":
    """The add-on of a stage block (None when `lora.rank` is 0 or the block has none)."""
    lc = block.get("lora")
    if not lc or int(lc.rank) == 0:
      return None
    return cls(int(lc.rank), float(lc.alpha), lora.parse_targets(lc.targets),
               float(lc.dropout))

  @property
  def scale(self) -> float:
    return lora.scale_of(self.rank, self.alpha)

  def init(self, model_cfg, rng, dtype):
    return lora.init_adapters(model_cfg, self.rank, self.targets, rng, dtype)

  def adapters(self, state, rng, step, micro):
    """The training forward's adapters: dropout keyed by step and micro-batch."""
    key = jax.random.fold_in(jax.random.fold_in(rng, step), micro) if self.dropout else None
    return lora.Adapters(state["lora"], key, self.scale, self.dropout)

  def eval_adapters(self, state):
    return lora.Adapters(state["lora"], None, self.scale, 0.0)

  def merged(self, model_cfg, state):
    """The dense params W + scale * A B of a train state."""
    return lora.merge(model_cfg, state["params"], state["lora"], self.scale)

  def step_loss(self, state, step):
    return None

  def post_update(self, state, step):
    return state
