"""Depth growth (Gstack, Du et al. 2024): a trained model of n layers becomes one of n * g.

Operators (`grow.operator`):
  stack       grown layer k is a copy of source layer k mod n: the whole list repeated g
              times, 0..n-1, 0..n-1, ... (the paper's best operator; not function-preserving)
  interleave  grown layer k is a copy of source layer k // g (each layer repeated in place)
  zero        source layer i at position i * g, the g - 1 layers after it new: freshly
              initialised, with their output projections (wo, w_down; parallel: w_out) at
              zero, so each starts as an identity block and the grown model computes exactly
              what the source did (the function-preserving baseline)
  random      the same placement, the new layers freshly initialised throughout
Embeddings, the final norm and the head are copied. Every copy is its own array: training
one copy never moves another.

`timing(N, C)` is the paper's fitted growth point. It was fitted on billion-parameter runs;
for anything CPU-sized it extrapolates far outside its range, and says so.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax
import numpy as np

from jshear.config_check import GROW_OPERATORS as OPERATORS
from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.model.params import init_params

# The projections that write into the residual stream: zero them and a block adds nothing.
OUTPUT_PROJECTIONS = {"llama": ("wo", "w_down"), "parallel": ("w_out",)}


def grown_layers(source_layers: int, factor: int, operator: str) -> list:
  """For each grown layer, the source layer it copies, or None for a new layer."""
  n, g = int(source_layers), int(factor)
  if operator == "stack":
    return [k % n for k in range(n * g)]
  if operator == "interleave":
    return [k // g for k in range(n * g)]
  if operator in ("zero", "random"):
    return [k // g if k % g == 0 else None for k in range(n * g)]
  raise JShearError(f"grow.operator: expected one of {OPERATORS}, got {operator!r}")


def growth_factor(source_layers: int, factor: int = 0, target_layers: int = 0) -> int:
  """g from `grow.factor`, or from `grow.target_layers` when that divides evenly."""
  if factor and target_layers:
    raise JShearError("grow.factor and grow.target_layers are both set: set one")
  if target_layers:
    if target_layers % source_layers or target_layers < source_layers:
      raise JShearError(f"grow.target_layers={target_layers} is not a multiple of the source's "
                        f"{source_layers} layers (Gstack stacks the whole layer list)")
    factor = target_layers // source_layers
  if not factor or factor < 2:
    raise JShearError(f"grow.factor must be an integer >= 2 (or set grow.target_layers), "
                      f"got {factor}")
  return int(factor)


def grow(cfg: ModelConfig, params: dict, factor: int, operator: str = "stack",
         rng=None, std: float = 0.02) -> tuple[ModelConfig, dict]:
  """(grown config, grown params). rng (a jax key) draws the new layers of zero/random. The
  grown layers are host (numpy) arrays, so growing never needs the grown model on a device."""
  order = grown_layers(cfg.num_layers, factor, operator)
  new_cfg = dataclasses.replace(cfg, num_layers=len(order))
  fresh = None
  if any(i is None for i in order):
    if rng is None:
      raise ValueError(f"grow(operator={operator!r}) needs an rng for its new layers")
    # one compiled init, not one compile per weight shape; then host arrays
    fresh = jax.device_get(jax.jit(lambda key: init_params(new_cfg, key, std=std)["layers"])(rng))
    fresh = jax.tree.map(lambda x, p: np.asarray(x, p.dtype), fresh, params["layers"])
    if operator == "zero":
      fresh = {k: (np.zeros_like(v) if k in OUTPUT_PROJECTIONS[cfg.family] else v)
               for k, v in fresh.items()}

  def layer(name, src):
    rows = [np.asarray(src[i]) if i is not None else fresh[name][k] for k, i in enumerate(order)]
    return np.stack(rows)  # on the host, a new array: no copy shares memory with another

  out = {k: v for k, v in params.items() if k != "layers"}
  out["layers"] = {name: layer(name, src) for name, src in params["layers"].items()}
  return new_cfg, out


# ---- when to grow -----------------------------------------------------------------------

# The range the growth-timing formula was fitted on (paper's runs, recalled: models of about
# 410M to 7B parameters and budgets of about 1e20 to 1e23 FLOPs; REFERENCE.md §7, unverified).
FITTED_PARAMS = (4.1e8, 7e9)
FITTED_FLOPS = (1e20, 1e23)


def timing(n_params: float, flops: float) -> float:
  """The growth point d in tokens: log10 d = 0.88 log10 N + 163.27 / log10 C - 5.74, with N
  the grown model's parameters and C the training FLOPs. Warns outside the fitted range."""
  if not (n_params > 0 and flops > 1):
    raise JShearError(f"timing: expected N > 0 and C > 1, got N={n_params}, C={flops}")
  lo_n, hi_n = FITTED_PARAMS
  lo_c, hi_c = FITTED_FLOPS
  if not (lo_n <= n_params <= hi_n and lo_c <= flops <= hi_c):
    warnings.warn(f"Gstack timing: N={n_params:.3g} parameters, C={flops:.3g} FLOPs lies outside "
                  f"the range the formula was fitted on (N {lo_n:.2g}-{hi_n:.2g}, C "
                  f"{lo_c:.2g}-{hi_c:.2g}); the growth point is an extrapolation", stacklevel=2)
  return float(10 ** (0.88 * math.log10(n_params) + 163.27 / math.log10(flops) - 5.74))

