"""Functional forward pass of both block families: `forward(params, tokens, masks, cfg=...)`.

The layer loop is a `lax.scan` over weights stacked on a leading `layers` axis, wrapped in
`jax.checkpoint` with the configured remat policy. Masks (see `jshear.model.masks`) are a
separate pytree; absent masks cost nothing and all-ones masks give the unmasked model.
LoRA adapters (`jshear.model.lora.Adapters`) are one more optional argument, scanned with
the layers; None gives exactly the plain model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jshear.model import layers as L
from jshear.model.attention import attention
from jshear.model.config import ModelConfig
from jshear.model.lora import layer_delta
from jshear.model.masks import per_layer_masks, validate_masks
from jshear.model.params import fused_in_sizes

_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _scale_heads(ctx, head_scale, ste=None):
  return ctx if head_scale is None else L.apply_mask(ctx, head_scale[:, None], ste)


def _scale_last(x, scale, ste=None):
  return x if scale is None else L.apply_mask(x, scale, ste)


def _plus(y, delta):
  return y if delta is None else y + delta


def _proj(x, lp, name, target, ad, n_in=1):
  """x @ W, plus the layer's adapter on `target` when `ad` (a per-layer applier) has one."""
  return _plus(L.dense(x, lp[name], n_in), ad(target, x) if ad else None)


def _qkv(cfg, h, lp, ad=None):
  """Sequential-block projections [B, T, N, Dh], with Qwen2's biases (added after the
  projection, so a hidden mask on h leaves them alone) and Qwen3's q/k RMSNorm over head_dim
  (one weight for all heads, before RoPE; head and hidden masks leave it alone)."""
  q, k, v = (_proj(h, lp, n, t, ad) for n, t in (("wq", "q"), ("wk", "k"), ("wv", "v")))
  if cfg.qkv_bias:
    q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
  if cfg.qk_norm:
    q = L.rms_norm(q, lp["q_norm"], cfg.norm_eps)
    k = L.rms_norm(k, lp["k_norm"], cfg.norm_eps)
  return q, k, v


def llama_block(cfg, x, lp, lm, hidden, rope, attend, ad=None):
  """One sequential block. `attend(q, k, v) -> (ctx, extra)` does the attention (training,
  KV-cache decoding and importance scoring differ only there). Returns (x, aux, extra);
  aux holds the unmasked head contexts, MLP activations and norm outputs, which scorers
  read and training leaves for XLA to drop. `ad(target, x)`: this layer's LoRA deltas."""
  cos, sin = rope
  ste = lm.get("ste")
  h1 = L.rms_norm(x, lp["attn_norm"], cfg.norm_eps, hidden, ste)
  q, k, v = _qkv(cfg, h1, lp, ad)
  q, k = L.apply_rope(q, cos, sin, False), L.apply_rope(k, cos, sin, False)
  ctx, extra = attend(q, k, v)
  x = x + _scale_last(_proj(_scale_heads(ctx, lm.get("head_scale"), ste), lp, "wo", "o", ad, 2),
                      hidden, ste)
  h2 = L.rms_norm(x, lp["mlp_norm"], cfg.norm_eps, hidden, ste)
  act = L.swiglu(_proj(h2, lp, "w_gate", "gate", ad), _proj(h2, lp, "w_up", "up", ad))
  x = x + _scale_last(_proj(_scale_last(act, lm.get("inter_scale"), ste), lp, "w_down", "down",
                            ad), hidden, ste)
  return x, {"ctx": ctx, "act": act, "norms": (h1, h2)}, extra


def _split_points(cfg):
  sizes = [n for _, n in fused_in_sizes(cfg)]
  return [sum(sizes[:i + 1]) for i in range(len(sizes) - 1)]


def parallel_block(cfg, x, lp, lm, hidden, rope, attend, ad=None):
  """One parallel (PaLM/CHOP) block; same contract as `llama_block`. LoRA adapts the fused
  projections per part: each part's delta is added to the columns (rows) it owns."""
  cos, sin = rope
  B, T, _ = x.shape
  H, KV, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  ste = lm.get("ste")
  h = L.layer_norm(x, lp["norm"], cfg.norm_eps, hidden, ste)
  fused = L.dense(h, lp["w_in"])  # one matmul for q, k, v, gate and up
  q, k, v, gate, up = jnp.split(fused, _split_points(cfg), axis=-1)
  q, k, v = q.reshape(B, T, H, Dh), k.reshape(B, T, KV, Dh), v.reshape(B, T, KV, Dh)
  if ad:
    q, k, v, gate, up = (_plus(y, ad(t, h)) for y, t in zip(
        (q, k, v, gate, up), ("q", "k", "v", "gate", "up")))
  if cfg.qk_norm:
    q = L.layer_norm(q, lp["q_norm"], cfg.norm_eps)
    k = L.layer_norm(k, lp["k_norm"], cfg.norm_eps)
  q, k = L.apply_rope(q, cos, sin, True), L.apply_rope(k, cos, sin, True)
  ctx, extra = attend(q, k, v)
  act = L.swiglu(gate, up)
  # One matmul for attention-out and FFN-out: [ctx | act] @ [wo ; w_down].
  ctx_in = _scale_heads(ctx, lm.get("head_scale"), ste)
  act_in = _scale_last(act, lm.get("inter_scale"), ste)
  cat = jnp.concatenate([ctx_in.reshape(B, T, H * Dh), act_in], axis=-1)
  out = L.dense(cat, lp["w_out"])
  if ad:
    out = _plus(_plus(out, ad("o", ctx_in)), ad("down", act_in))
  return x + _scale_last(out, hidden, ste), {"ctx": ctx, "act": act, "norms": (h,)}, extra


def block_fn(cfg):
  return llama_block if cfg.family == "llama" else parallel_block


def causal_attend(cfg, segment_ids):
  """The training-time `attend` for the blocks: causal, inside each packed document."""
  def attend(q, k, v):
    return attention(q, k, v, causal=True, segment_ids=segment_ids,
                     impl=cfg.attention_impl), None
  return attend


def final_norm(x, params, cfg, hidden=None, ste=None):
  norm = L.rms_norm if cfg.family == "llama" else L.layer_norm
  return norm(x, params["final_norm"], cfg.norm_eps, hidden, ste)


def output_logits(x, params, cfg):
  """fp32 logits [..., V] from final-normed hidden states [..., D] (tied or untied head)."""
  head = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
  logits = L.dense(x, head, preferred_element_type=jnp.float32)
  return logits * cfg.logit_scale if cfg.logit_scale != 1.0 else logits


def _applier(adapters, weights, layer):
  """ad(target, x) for one layer: its adapter delta, or None where `target` is not adapted.
  Dropout keys differ per layer (and per target, in `layer_delta`)."""
  if adapters is None:
    return None
  rng = None if adapters.rng is None else jax.random.fold_in(adapters.rng, layer)
  return lambda target, x: layer_delta(weights, target, x, adapters.scale, adapters.dropout, rng)


def forward(params, tokens, masks=None, *, cfg: ModelConfig, positions=None, segment_ids=None,
            compute_dtype=None, return_hidden=False, mask_ste=None, adapters=None):
  """Logits [B, T, V] in fp32 for `tokens` [B, T].

  positions [B, T] restart at each packed document; segment_ids [B, T] keep attention inside
  one document. compute_dtype (e.g. bf16) casts weights and activations; params stay as given.
  return_hidden=True also returns the residual stream after every layer, [L, B, T, D].
  mask_ste (a scalar in [0, 1], or None): straight-through weight of the gradient that masked
  units still receive (see `layers.apply_mask`); iterative pruning (DimCHOP) uses it so
  masked dims keep training until they are re-scored. Values are unchanged.
  adapters: a `jshear.model.lora.Adapters` (None: the plain model); its weights are cast
  to compute_dtype like the params.
  """
  validate_masks(cfg, masks)
  masks = masks or {}
  B, T = tokens.shape
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  if compute_dtype is not None:
    params = jax.tree.map(lambda p: p.astype(compute_dtype), params)
    if adapters is not None:
      adapters = adapters.replace(
          weights=jax.tree.map(lambda p: p.astype(compute_dtype), adapters.weights))
  hidden = masks.get("hidden")
  dtype = params["embed"].dtype
  x = jnp.take(params["embed"], tokens, axis=0)
  x = _scale_last(x, hidden, mask_ste)
  rope = L.rope_cos_sin(cfg, positions)
  block = block_fn(cfg)
  attend = causal_attend(cfg, segment_ids)

  def body(x, xs):
    lp, lm = xs[:2]
    ad = _applier(adapters, *xs[2]) if adapters is not None else None
    x = block(cfg, x, lp, lm, hidden, rope, attend, ad)[0].astype(dtype)
    return x, (x if return_hidden else None)

  if cfg.remat != "none":
    body = jax.checkpoint(body, policy=_REMAT[cfg.remat], prevent_cse=not cfg.scan_layers)
  layer_masks = per_layer_masks(cfg, masks)
  if mask_ste is not None and masks:
    layer_masks["ste"] = jnp.broadcast_to(jnp.asarray(mask_ste, jnp.float32), (cfg.num_layers,))
  xs = (params["layers"], layer_masks)
  if adapters is not None:  # the plain model's program stays as it was
    xs += ((adapters.weights, jnp.arange(cfg.num_layers, dtype=jnp.int32)),)
  if cfg.scan_layers:
    x, hiddens = jax.lax.scan(body, x, xs)
  else:
    # Unstack once with split: its transpose is one concatenate, where per-layer indexing
    # would pad every layer's gradient to the full stack and add them up.
    per_layer = jax.tree.map(lambda a: [t[0] for t in jnp.split(a, cfg.num_layers)], xs)
    hs = []
    for i in range(cfg.num_layers):
      x, h = body(x, jax.tree.map(lambda a: a[i], per_layer, is_leaf=lambda a: isinstance(a, list)))
      hs.append(h)
    hiddens = jnp.stack(hs) if return_hidden else None
  logits = output_logits(final_norm(x, params, cfg, hidden, mask_ste), params, cfg)
  return (logits, hiddens) if return_hidden else logits
