"""Dynamic batch loading: per-domain weight updates from eval loss vs reference loss.

Rules (by name):
- `sheared`: the paper. delta = max(l - lref, 0); w <- w * exp(delta); renormalise.
- `sheared_code`: the reference code. w <- (1 - c) softmax(log w + eta (l - lref)) + c / k
  (eta = 1, c = 1e-4, no clip: domains below their reference lose weight).
- `doremi`: a <- a * exp(eta max(l - lref, 0)), renormalised, then (1 - c) a + c / k.
- `constant`: no change.
All work in log space, so a huge excess loss saturates instead of overflowing.
A domain whose loss or reference is not finite, or that had no eval rows, keeps
its weight exactly (with a warning); the others share the rest of the mass.
"""

import logging
import math
from typing import Mapping

import numpy as np

from jshear.config_check import REWEIGHT_RULES as RULES  # noqa: F401 (defined there)
from jshear.errors import JShearError

log = logging.getLogger(__name__)

PAPER_DOMAINS = ("cc", "github", "book", "stackexchange", "wiki", "arxiv", "c4")

# Sheared-LLaMA's initial domain weights (RedPajama proportions in "pruning",
# the 1.3B run's final pruning weights in "continued").
INITIAL_WEIGHTS = {
    "pruning": {"cc": 0.67, "github": 0.045, "book": 0.045, "stackexchange": 0.02,
                "wiki": 0.045, "arxiv": 0.025, "c4": 0.15},
    "continued": {"cc": 0.2192, "github": 0.0002, "book": 0.0791, "stackexchange": 0.0064,
                  "wiki": 0.0096, "arxiv": 0.001, "c4": 0.6845},
}

# Per-domain reference losses the paper extrapolated from LLaMA2 7B/13B/70B.
REFERENCE_LOSSES = {
    "1.3B": {"cc": 1.9643, "github": 0.7459, "book": 2.1393, "stackexchange": 1.6117,
             "wiki": 1.7590, "arxiv": 1.4449, "c4": 2.1251},
    "2.7B": {"cc": 1.8712, "github": 0.6883, "book": 2.0325, "stackexchange": 1.5353,
             "wiki": 1.6297, "arxiv": 1.3560, "c4": 2.0328},
    "370M": {"cc": 2.1401, "github": 0.8694, "book": 2.3625, "stackexchange": 1.7791,
             "wiki": 2.0470, "arxiv": 1.6637, "c4": 2.3139},
}

DEFAULTS = {"sheared": {}, "sheared_code": {"eta": 1.0, "c": 1e-4},
            "doremi": {"eta": 1.0, "c": 1e-3}, "constant": {}}  # DoReMi's smoothing c


def scaling_law_ref_loss(params_per_domain: Mapping[str, tuple[float, float, float]],
                         n_params: float) -> dict[str, float]:
  """L(N) = a / N**b + c per domain, for a target model of n_params parameters."""
  if not n_params > 0:
    raise JShearError(f"n_params: expected > 0, got {n_params}")
  out = {}
  for d, abc in params_per_domain.items():
    if len(abc) != 3:
      raise JShearError(f"scaling law for '{d}': expected (a, b, c), got {abc}")
    a, b, c = map(float, abc)
    out[d] = a / n_params**b + c
  return out


def reference_losses(kind: str, value, n_params: float | None = None) -> dict[str, float]:
  """Reference losses from config.

  kind: 'paper' (value = '1.3B' | '2.7B' | '370M'), 'given' or 'source' (value =
  {domain: loss}; 'source' = the source model's own losses, measured at start),
  'scaling_law' (value = {domain: (a, b, c)}, with n_params).
  """
  if kind == "paper":
    if value not in REFERENCE_LOSSES:
      raise JShearError(f"reference losses 'paper': expected one of {sorted(REFERENCE_LOSSES)}, got {value!r}")
    out = dict(REFERENCE_LOSSES[value])
  elif kind in ("given", "source"):
    out = {d: float(v) for d, v in dict(value).items()}
  elif kind == "scaling_law":
    if n_params is None:
      raise JShearError("reference losses 'scaling_law': expected n_params, got None")
    out = scaling_law_ref_loss(value, n_params)
  else:
    raise JShearError(f"reference losses: expected kind paper|given|source|scaling_law, got {kind!r}")
  bad = [d for d, v in out.items() if not math.isfinite(v)]
  if bad:
    raise JShearError(f"reference losses ({kind}): expected finite values, got non-finite for {bad}")
  return out


def _softmax_log(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max()
  e = np.exp(z)
  return e / e.sum()


def _rule(rule: str, w: np.ndarray, excess: np.ndarray, eta: float, c: float) -> np.ndarray:
  with np.errstate(divide="ignore"):
    logw = np.log(w)  # log 0 = -inf keeps a zero weight at zero
  k = len(w)
  # exp(1e4) is already "all the mass": clipping keeps the logits finite.
  if rule == "sheared":
    return _softmax_log(logw + np.clip(excess, 0.0, 1e4))
  if rule == "sheared_code":
    return (1 - c) * _softmax_log(logw + np.clip(eta * excess, -1e4, 1e4)) + c / k
  if rule == "doremi":
    return (1 - c) * _softmax_log(logw + np.clip(eta * np.maximum(excess, 0.0), 0.0, 1e4)) + c / k
  return w


def update_weights(rule: str, weights: Mapping[str, float], losses: Mapping[str, float],
                   ref_losses: Mapping[str, float], eval_counts: Mapping[str, int] | None = None,
                   eta: float | None = None, c: float | None = None) -> dict[str, float]:
  """New domain weights (on the simplex) after one evaluation.

  losses: mean eval loss per domain; eval_counts: eval rows (or tokens) per domain,
  0 meaning the loss is meaningless. Domains missing from losses are held fixed.
  """
  if rule not in RULES:
    raise JShearError(f"reweight rule: expected one of {RULES}, got {rule!r}")
  eta = DEFAULTS[rule].get("eta", 1.0) if eta is None else float(eta)
  c = DEFAULTS[rule].get("c", 0.0) if c is None else float(c)
  if not (math.isfinite(eta) and eta >= 0):
    raise JShearError(f"reweight eta: expected finite and >= 0, got {eta}")
  if not 0.0 <= c <= 1.0:
    raise JShearError(f"reweight c: expected in [0, 1], got {c}")
  names = list(weights)
  w = np.asarray([float(weights[d]) for d in names])
  if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
    raise JShearError(f"weights: expected finite, >= 0, positive sum, got {dict(zip(names, w.tolist()))}")
  missing = sorted(set(names) - set(ref_losses))
  if missing:
    raise JShearError(f"reference losses: expected a value for every domain, missing {missing}")
  w = w / w.sum()
  counts = eval_counts or {}
  l = np.asarray([float(losses.get(d, math.nan)) for d in names])
  ref = np.asarray([float(ref_losses[d]) for d in names])
  ok = np.isfinite(l) & np.isfinite(ref) & np.asarray([counts.get(d, 1) > 0 for d in names])
  held = [d for d, o in zip(names, ok) if not o]
  if held:
    log.warning("reweight: holding %s fixed (no eval data or non-finite loss)", held)
  free_mass = 1.0 - w[~ok].sum()
  new = w.copy()
  if ok.any() and free_mass > 0 and rule != "constant":
    sub = w[ok] / free_mass
    new[ok] = free_mass * _rule(rule, sub, l[ok] - ref[ok], eta, c)
  new = np.clip(new, 0.0, None)
  return dict(zip(names, (new / new.sum()).tolist()))


class DynamicBatchLoading:
  """Stateless-config wrapper: `dbl(weights, losses, eval_counts)` -> new weights."""

  def __init__(self, rule: str, ref_losses: Mapping[str, float], eta: float | None = None,
               c: float | None = None):
    if rule not in RULES:
      raise JShearError(f"reweight rule: expected one of {RULES}, got {rule!r}")
    self.rule, self.ref_losses, self.eta, self.c = rule, dict(ref_losses), eta, c

  def __call__(self, weights, losses, eval_counts=None) -> dict[str, float]:
    return update_weights(self.rule, weights, losses, self.ref_losses, eval_counts, self.eta, self.c)
