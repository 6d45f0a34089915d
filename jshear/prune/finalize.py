"""Masks -> dense model of the target shape. Every pruning method ends here.

1. Fold the surviving (soft) mask values into the weights, so the dense model computes what
   the masked model computed:
     head (x kv x head_layer x layer) -> rows of the attention output projection (per query
       head, which is also right under GQA where v is shared by a group);
     intermediate (x mlp x layer)      -> rows of the down projection;
     hidden                            -> embeddings, every residual-branch output
       (wo, w_down columns) and every norm weight, the final norm included. The LM head is
       not scaled again (the reference code applies the hidden mask to it twice).
   q/k/v biases (Qwen2) and shared q/k norms (Qwen3) need no fold: head masks act after
   attention, through the output projection, and the hidden mask acts on the projections'
   inputs (via the norm weight), while biases are added after the projection.
2. Keep the units whose mask is non-zero and slice (`jshear.prune.slice.slice_model`).
"""

from __future__ import annotations

import numpy as np

from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.model.masks import per_layer_masks, validate_masks
from jshear.model.params import fuse_layers, unfuse_layers
from jshear.prune.slice import slice_model


def fold_masks(cfg: ModelConfig, params, masks: dict):
  """Same-shape params that compute, without masks, what `params` compute with `masks`."""
  validate_masks(cfg, masks)
  scales = per_layer_masks(cfg, masks)
  parts = dict(params["layers"]) if cfg.family == "llama" else unfuse_layers(cfg, params["layers"])
  if "head_scale" in scales:
    parts["wo"] = parts["wo"] * scales["head_scale"][:, :, None, None]
  if "inter_scale" in scales:
    parts["w_down"] = parts["w_down"] * scales["inter_scale"][:, :, None]
  out = dict(params)
  if "hidden" in masks:
    z = masks["hidden"]
    for name in ("attn_norm", "mlp_norm", "norm"):
      if name in parts:
        parts[name] = parts[name] * z
    parts["wo"] = parts["wo"] * z
    parts["w_down"] = parts["w_down"] * z
    out["final_norm"] = params["final_norm"] * z
    if cfg.tie_embeddings and not _is_binary(z):
      # The tied matrix is both the input embedding (scaled by soft z) and the LM head (which
      # must not be); exactness needs them apart. Binary hidden masks keep the tie.
      out["lm_head"] = params["embed"].T
      cfg = cfg.replace(tie_embeddings=False)
    out["embed"] = params["embed"] * z
  out["layers"] = parts if cfg.family == "llama" else fuse_layers(cfg, parts)
  return cfg, out


def _is_binary(z) -> bool:
  z = np.asarray(z)
  return bool(np.all((z == 0) | (z == 1)))


def kept_indices(cfg: ModelConfig, masks: dict) -> dict:
  """Index arrays of surviving units (mask != 0), checked to give a uniform layer shape."""
  m = {k: np.asarray(v) for k, v in masks.items()}
  layers = np.nonzero(m["layer"] != 0)[0] if "layer" in m else np.arange(cfg.num_layers)
  keep = {"layers": layers}

  def rows(name, n):
    if name not in m:
      return np.tile(np.arange(n), (len(layers), 1))
    per = [np.nonzero(m[name][l] != 0)[0] for l in layers]
    counts = {len(p) for p in per}
    if len(counts) != 1:
      raise JShearError(f"mask {name!r} keeps different counts per layer {sorted(counts)}: "
                        "a dense model needs the same shape in every layer")
    return np.stack(per)

  heads = rows("head", cfg.num_heads)
  kv = rows("kv", cfg.num_kv_heads)
  group_of = lambda h: h // cfg.group_size
  # A query head survives only with its KV group; a KV group survives only if one of its
  # query heads does (for an MHA source the head mask is the group mask).
  heads = [np.array([h for h in heads[i] if group_of(h) in set(kv[i])]) for i in range(len(layers))]
  kv = [np.unique(group_of(h)) for h in heads]
  for name, arr in (("head", heads), ("kv", kv)):
    if len({len(a) for a in arr}) != 1:
      raise JShearError(f"masks keep different numbers of {name}s per layer "
                        f"{sorted({len(a) for a in arr})}: a dense model needs one shape")
  keep["kv"], keep["heads"] = np.stack(kv), np.stack(heads)
  keep["intermediate"] = rows("intermediate", cfg.intermediate_size)
  if "hidden" in m:
    keep["hidden"] = np.nonzero(m["hidden"] != 0)[0]
  return keep


def finalize(cfg: ModelConfig, params, masks: dict):
  """(new_cfg, dense params) computing exactly what `params` compute under `masks`. A tied
  source stays tied unless its hidden mask has soft (non-0/1) values."""
  keep = kept_indices(cfg, masks)
  cfg2, folded = fold_masks(cfg, params, masks)
  return slice_model(cfg2, folded, keep)
