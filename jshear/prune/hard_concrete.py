"""Hard-concrete (stretched, clipped binary concrete) gates for L0 pruning (Louizos et al. 2018).

A gate with logit `log_alpha` is sampled as
  u ~ U(eps, 1 - eps);  s = sigmoid((log u - log(1 - u) + log_alpha) / beta)
  z = clip(s * (r - l) + l, 0, 1)
so z is exactly 0 or 1 with non-zero probability and differentiable in between.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

L, R, BETA, EPS = -0.1, 1.1, 2.0 / 3.0, 1e-6
# Sheared-LLaMA's deterministic-mask sharpening factor ("magical number" in the reference).
DETERMINISTIC_SCALE = 0.8
# Reference bounds for log_alpha (ln 0.01, ln 100): P(z != 0) stays in ~[0.047, 0.998].
LOG_ALPHA_MIN, LOG_ALPHA_MAX = math.log(1e-2), math.log(1e2)
# beta * log(-l / r): the log_alpha at which P(z != 0) would be 1/2 without the shift.
_SHIFT = BETA * math.log(-L / R)


def sample(log_alpha: jax.Array, rng: jax.Array) -> jax.Array:
  """One gate sample z in [0, 1], same shape as log_alpha.

  The caller draws one sample per step and shares it across the whole batch.
  """
  u = jax.random.uniform(rng, log_alpha.shape, jnp.float32, EPS, 1.0 - EPS)
  s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + log_alpha) / BETA)
  return jnp.clip(s * (R - L) + L, 0.0, 1.0)


def prob_nonzero(log_alpha: jax.Array) -> jax.Array:
  """P(z != 0) = 1 - sigmoid(beta * log(-l/r) - log_alpha), written as one stable sigmoid."""
  return jax.nn.sigmoid(log_alpha - _SHIFT)


def deterministic_score(log_alpha: jax.Array) -> jax.Array:
  """The reference's eval-time soft value sigmoid(log_alpha / beta * 0.8)."""
  return jax.nn.sigmoid(log_alpha / BETA * DETERMINISTIC_SCALE)


def init_log_alpha(shape, rng: jax.Array, mean: float = 5.0, std: float = 0.01) -> jax.Array:
  """N(mean, std) logits (reference: N(5, 0.01); clamp_log_alpha then brings them to ~4.6)."""
  return mean + std * jax.random.normal(rng, shape, jnp.float32)


def clamp_log_alpha(log_alpha, bounds=(LOG_ALPHA_MIN, LOG_ALPHA_MAX)):
  """Clip log_alpha (an array or a pytree of them) to [ln 0.01, ln 100], the reference's choice.

  Use it as a projection *after* each optimizer update (the reference clamps the parameter
  in place before every forward), never inside the differentiated loss: clip has zero
  gradient outside the range (and half a gradient at its edge), which would freeze gates.
  """
  lo, hi = bounds
  return jax.tree.map(lambda a: jnp.clip(a, lo, hi), log_alpha)
