"""Structural masks: a pytree of their own (a dict name -> array), never model parameters.

Where each mask multiplies (same for both block families):
  head [L, H]          each query head's attention context, before the output projection
  kv [L, KV]           every query head of that KV group (GQA: drops whole groups)
  head_layer [L]       the attention sublayer output
  intermediate [L, I]  the MLP hidden activation, before the down projection
  mlp [L]              the MLP sublayer output
  layer [L]            both head_layer and mlp (drops a whole block)
  hidden [D]           embeddings, every residual-branch output and every norm's output;
                       norms then average over the kept (non-zero) dimensions only.
Any subset may be absent; an absent mask is all ones. All-ones masks give the unmasked model.
"""

from __future__ import annotations

import jax.numpy as jnp

from jshear.errors import JShearError
from jshear.model.config import ModelConfig

MASK_NAMES = ("layer", "head", "kv", "head_layer", "intermediate", "mlp", "hidden")


def mask_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  L = cfg.num_layers
  return {
      "layer": (L,),
      "head": (L, cfg.num_heads),
      "kv": (L, cfg.num_kv_heads),
      "head_layer": (L,),
      "intermediate": (L, cfg.intermediate_size),
      "mlp": (L,),
      "hidden": (cfg.hidden_size,),
  }


def ones_masks(cfg: ModelConfig, names=MASK_NAMES, dtype=jnp.float32) -> dict:
  shapes = mask_shapes(cfg)
  return {n: jnp.ones(shapes[n], dtype) for n in names}


def validate_masks(cfg: ModelConfig, masks: dict | None) -> None:
  if not masks:
    return
  shapes = mask_shapes(cfg)
  for name, m in masks.items():
    if name not in shapes:
      raise JShearError(f"unknown mask {name!r} (known: {list(MASK_NAMES)})")
    if tuple(m.shape) != shapes[name]:
      raise JShearError(f"mask {name!r} has shape {tuple(m.shape)}, expected {shapes[name]}")


def per_layer_masks(cfg: ModelConfig, masks: dict | None) -> dict:
  """Combine masks into the per-layer factors the blocks use (all [L, ...] or absent).

  head_scale [L, H]: head * kv (expanded to its query heads) * head_layer * layer
  inter_scale [L, I]: intermediate * mlp * layer
  Layer-level scalars fold into the per-unit factors because the output projection is
  linear: scaling its input by s equals scaling its output by s.
  """
  masks = masks or {}
  out = {}
  L = cfg.num_layers
  head = jnp.ones((L, cfg.num_heads))
  attn_parts = False
  if "head" in masks:
    head, attn_parts = head * masks["head"], True
  if "kv" in masks:
    head, attn_parts = head * jnp.repeat(masks["kv"], cfg.group_size, axis=1), True
  for name in ("head_layer", "layer"):
    if name in masks:
      head, attn_parts = head * masks[name][:, None], True
  if attn_parts:
    out["head_scale"] = head
  inter = jnp.ones((L, cfg.intermediate_size))
  mlp_parts = False
  if "intermediate" in masks:
    inter, mlp_parts = inter * masks["intermediate"], True
  for name in ("mlp", "layer"):
    if name in masks:
      inter, mlp_parts = inter * masks[name][:, None], True
  if mlp_parts:
    out["inter_scale"] = inter
  return out
