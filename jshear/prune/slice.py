"""Slice a model down to kept layers / heads / KV groups / MLP units / hidden channels.

This is the single path from "which units survive" to a dense smaller model: learned masks,
importance scores, LayerCHOP and the baselines all end here. Works on both families (the
parallel family is sliced through its unfused per-part view). Biases go with their heads
(bq per query head, bk/bv per KV group); Qwen3's shared q/k norms stay whole.
"""

from __future__ import annotations

import numpy as np

import jax.numpy as jnp

from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.model.params import fuse_layers, unfuse_layers


def _take(x, idx, axis):
  """Per-layer gather: x [L, ...], idx [L, k] along `axis` (>= 1)."""
  shape = [1] * x.ndim
  shape[0], shape[axis] = idx.shape
  return jnp.take_along_axis(x, jnp.asarray(idx).reshape(shape), axis=axis)


def _full(n, L):
  return np.tile(np.arange(n), (L, 1))


def check_gqa_consistency(cfg: ModelConfig, heads: np.ndarray, kv: np.ndarray) -> None:
  """The j-th kept query head must belong to the (j // group)-th kept KV group."""
  new_group = heads.shape[1] // kv.shape[1]
  for l in range(heads.shape[0]):
    for j, h in enumerate(heads[l]):
      if h // cfg.group_size != kv[l, j // new_group]:
        raise JShearError(
            f"layer {l}: kept query head {int(h)} is not in kept KV group "
            f"{int(kv[l, j // new_group])}; GQA needs an equal number of query heads per kept group")


def slice_model(cfg: ModelConfig, params, keep: dict):
  """keep: any of
    layers [L'] (sorted layer indices), heads [L', H'], kv [L', KV'], intermediate [L', I'],
    hidden [D'] (per-layer index arrays are given for the kept layers, sorted per row).
  Returns (new_cfg, new_params)."""
  L = cfg.num_layers
  layers = np.asarray(keep.get("layers", np.arange(L)))
  Lk = len(layers)
  heads = np.asarray(keep.get("heads", _full(cfg.num_heads, Lk)))
  kv = np.asarray(keep.get("kv", _full(cfg.num_kv_heads, Lk)))
  inter = np.asarray(keep.get("intermediate", _full(cfg.intermediate_size, Lk)))
  hidden = np.asarray(keep.get("hidden", np.arange(cfg.hidden_size)))
  for name, arr in (("heads", heads), ("kv", kv), ("intermediate", inter)):
    if arr.ndim != 2 or arr.shape[0] != Lk:
      raise JShearError(f"keep[{name!r}] must have shape [kept layers={Lk}, n], got {arr.shape}")
  if heads.shape[1] % kv.shape[1]:
    raise JShearError(f"kept heads ({heads.shape[1]}) must be divisible by kept KV groups "
                      f"({kv.shape[1]})")
  check_gqa_consistency(cfg, heads, kv)

  new_cfg = cfg.replace(num_layers=Lk, num_heads=heads.shape[1], num_kv_heads=kv.shape[1],
                        intermediate_size=inter.shape[1], hidden_size=len(hidden))
  lp = params["layers"]
  parts = lp if cfg.family == "llama" else unfuse_layers(cfg, lp)
  parts = {k: v[layers] for k, v in parts.items()}
  out = {}
  for name, w in parts.items():
    if name in ("attn_norm", "mlp_norm", "norm"):
      w = w[:, hidden]
    elif name == "wq":
      w = _take(w, heads, 2)[:, hidden]
    elif name in ("wk", "wv"):
      w = _take(w, kv, 2)[:, hidden]
    elif name == "wo":
      w = _take(w, heads, 1)[..., hidden]
    elif name in ("q_norm", "k_norm") and cfg.family == "llama":
      pass  # one [Dh] weight shared by all heads: no head or hidden axis to slice
    elif name in ("q_norm", "bq"):
      w = _take(w, heads, 1)
    elif name in ("k_norm", "bk", "bv"):
      w = _take(w, kv, 1)
    elif name in ("w_gate", "w_up"):
      w = _take(w, inter, 2)[:, hidden]
    elif name == "w_down":
      w = _take(w, inter, 1)[..., hidden]
    else:
      raise JShearError(f"slice_model does not know parameter {name!r}")
    out[name] = w
  new = {"embed": params["embed"][:, hidden], "final_norm": params["final_norm"][hidden],
         "layers": out if cfg.family == "llama" else fuse_layers(new_cfg, out)}
  if "lm_head" in params:
    new["lm_head"] = params["lm_head"][hidden]
  return new_cfg, new
