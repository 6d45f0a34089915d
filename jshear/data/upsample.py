"""Domain upsampling at the end of training: boost chosen domains in the last steps.

During the last `last_fraction` of `total_steps`, each domain's weight is
multiplied by its factor (1 when not named) and the result renormalised.
Apply it to the weights dynamic batch loading produces, just before
`MixtureLoader.set_weights`.
"""

import math
from typing import Mapping

from jshear.errors import JShearError


def upsampling_starts(total_steps: int, last_fraction: float) -> int:
  """First step of the upsampling phase."""
  if not 0.0 <= last_fraction <= 1.0:
    raise JShearError(f"upsample last_fraction: expected in [0, 1], got {last_fraction}")
  return total_steps - int(round(last_fraction * total_steps))


def upsampled_weights(w: Mapping[str, float], step: int, total_steps: int, last_fraction: float,
                      factors: Mapping[str, float]) -> dict[str, float]:
  unknown = sorted(set(factors) - set(w))
  if unknown:
    raise JShearError(f"upsample factors: expected domains among {sorted(w)}, got unknown {unknown}")
  bad = {d: f for d, f in factors.items() if not (math.isfinite(f) and f >= 0)}
  if bad:
    raise JShearError(f"upsample factors: expected finite values >= 0, got {bad}")
  if step < upsampling_starts(total_steps, last_fraction):
    return dict(w)
  out = {d: x * factors.get(d, 1.0) for d, x in w.items()}
  total = sum(out.values())
  if total <= 0:
    raise JShearError(f"upsample factors {dict(factors)} zero out every weight of {dict(w)}")
  return {d: x / total for d, x in out.items()}
