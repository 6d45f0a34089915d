"""A second forward pass for inference: explicit attention masks and an optional KV cache.

`jshear.model.transformer.forward` is the training forward (causal, packed by segment ids).
Inference needs two things it does not have:
  * an arbitrary boolean attention mask [B, T, S] (prefix-shared multiple-choice scoring:
    several continuations attend to one copy of their context but not to each other), and
  * a KV cache with fixed-size buffers (prefill, then one token per step) for generation.

Both block families are implemented from the same building blocks (`jshear.model.layers`,
per-layer structural masks from `jshear.model.masks.per_layer_masks`), and tests check the
result equals `forward` on causal inputs, with and without masks.

  hidden, cache = forward_cached(params, tokens, positions, attn_mask, cfg=cfg,
                                 masks=None, cache=None, cache_index=None)
  logits = lm_head(params, hidden, cfg=cfg, masks=masks)

cache = {"k": [L, B, S, KV, Dh], "v": [L, B, S, KV, Dh]} (see `init_cache`); new keys and
values are written at `cache_index` (a scalar, same for every row), and attn_mask then spans
all S cache slots. Without a cache, attn_mask is [B, T, T].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jshear.model import layers as L
from jshear.model.attention import xla_attention
from jshear.model.config import ModelConfig
from jshear.model.masks import per_layer_masks, validate_masks
from jshear.model.transformer import block_fn, final_norm, output_logits


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=jnp.float32) -> dict:
  shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def _scale_last(x, scale):
  return x if scale is None else x * scale.astype(x.dtype)


def _attend(q, k, v, lk, lv, attn_mask, cache_index):
  """Write k/v into this layer's cache slice (if any) and attend with the explicit mask."""
  if lk is not None:
    idx = (0, cache_index, 0, 0)
    lk = jax.lax.dynamic_update_slice(lk, k.astype(lk.dtype), idx)
    lv = jax.lax.dynamic_update_slice(lv, v.astype(lv.dtype), idx)
    k, v = lk.astype(q.dtype), lv.astype(q.dtype)
  ctx = xla_attention(q, k, v, causal=False, mask=attn_mask)
  return ctx, lk, lv


def forward_cached(params, tokens, positions, attn_mask, *, cfg: ModelConfig, masks=None,
                   cache=None, cache_index=None, compute_dtype=None):
  """Residual stream after the last layer [B, T, D] (before the final norm), and the updated
  cache (None without one). attn_mask: bool [B, T, S], True = may attend."""
  validate_masks(cfg, masks)
  masks = masks or {}
  if compute_dtype is not None:
    params = jax.tree.map(lambda p: p.astype(compute_dtype), params)
  hidden = masks.get("hidden")
  dtype = params["embed"].dtype
  x = _scale_last(jnp.take(params["embed"], tokens, axis=0), hidden)
  rope = L.rope_cos_sin(cfg, positions)
  block = block_fn(cfg)
  layer_masks = per_layer_masks(cfg, masks)
  if cache_index is None:
    cache_index = jnp.int32(0)

  def body(x, xs):
    lp, lm, lk, lv = xs

    def attend(q, k, v):
      ctx, new_k, new_v = _attend(q, k, v, lk, lv, attn_mask, cache_index)
      return ctx, (new_k, new_v)

    x, _, (lk, lv) = block(cfg, x, lp, lm, hidden, rope, attend)
    return x.astype(dtype), (lk, lv)

  ks, vs = (cache["k"], cache["v"]) if cache is not None else (None, None)
  if cfg.scan_layers:
    x, (ks, vs) = jax.lax.scan(body, x, (params["layers"], layer_masks, ks, vs))
  else:
    outs = []
    for i in range(cfg.num_layers):
      pick = lambda a: None if a is None else a[i]
      x, kv = body(x, jax.tree.map(lambda a: a[i], (params["layers"], layer_masks))
                   + (pick(ks), pick(vs)))
      outs.append(kv)
    if cache is not None:
      ks = jnp.stack([o[0] for o in outs])
      vs = jnp.stack([o[1] for o in outs])
  new_cache = None if cache is None else {"k": ks, "v": vs}
  return x, new_cache


def lm_head(params, h, *, cfg: ModelConfig, masks=None, compute_dtype=None):
  """Final norm + output projection (as `forward` ends) on hidden states h [..., D] -> fp32
  logits [..., V]."""
  hidden = (masks or {}).get("hidden")
  out = {k: params[k] for k in ("final_norm", "embed" if cfg.tie_embeddings else "lm_head")}
  if compute_dtype is not None:
    out = {k: v.astype(compute_dtype) for k, v in out.items()}
  return output_logits(final_norm(h, out, cfg, hidden), out, cfg)


def tree_mask(doc_ids, branch_ids):
  """Prefix-shared packing mask [B, T, T]: token q sees token k <= q of the same document
  (doc id > 0) that is either context (branch 0) or in q's own branch."""
  T = doc_ids.shape[1]
  causal = jnp.arange(T)[None, :] <= jnp.arange(T)[:, None]
  same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
  kb = branch_ids[:, None, :]
  branch_ok = (kb == 0) | (kb == branch_ids[:, :, None])
  return causal[None] & same_doc & branch_ok
