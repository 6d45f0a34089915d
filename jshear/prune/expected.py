"""Expected kept sizes and expected prunable parameter counts from per-gate P(z != 0).

Gates are independent, so the expectation of a product of gates is the product of their
probabilities. Absent groups count as all ones (never pruned).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jshear.model.config import ModelConfig


def expected_sizes(probs: dict) -> dict:
  """Expected kept units per group: [L] for [L, .] groups, [L] for layer-level gates, scalar for hidden."""
  out = {}
  for name, p in probs.items():
    out[name] = jnp.sum(p) if name == "hidden" else (p if p.ndim == 1 else jnp.sum(p, axis=-1))
  return out


def prunable_params(cfg: ModelConfig) -> int:
  """Attention and MLP weight matrices (no embeddings, no norms): what pruning targets count."""
  attn = cfg.hidden_size * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
  return cfg.num_layers * (attn + 3 * cfg.hidden_size * cfg.intermediate_size)


def expected_params(cfg: ModelConfig, probs: dict) -> jax.Array:
  """Expected prunable parameter count (see `prunable_params`) under gate probabilities `probs`.

  Per layer, with layer-level factors a = P_layer * P_head_layer and m = P_layer * P_mlp and
  d = sum of P_hidden:
    q, o:  2 d head_dim a sum_h P_head[h] P_kv[g(h)]
    k, v:  2 d head_dim a sum_g P_kv[g] (1 - prod_{h in g} (1 - P_head[h]))
    mlp:   3 d m sum_i P_int[i]
  A K/V head disappears when its group is dropped or when all of its query heads are, hence
  the second factor: it is P_head for MHA (the reference's 4 d head_dim sum P_head) and ~1
  for GQA groups whose heads are mostly kept. For 0/1 masks that keep a whole target shape
  the result equals prunable_params(target config) exactly.
  """
  L, H, KV, I = cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size
  ones = lambda *s: jnp.ones(s, jnp.float32)
  get = lambda name, *shape: probs[name] if name in probs else ones(*shape)
  p_layer = get("layer", L)
  attn_layer = p_layer * get("head_layer", L)
  mlp_layer = p_layer * get("mlp", L)
  d = jnp.sum(probs["hidden"]) if "hidden" in probs else jnp.float32(cfg.hidden_size)
  p_head = get("head", L, H).reshape(L, KV, cfg.group_size)
  p_kv = get("kv", L, KV)
  q_heads = jnp.sum(p_head * p_kv[:, :, None], axis=(1, 2))                    # [L]
  kv_heads = jnp.sum(p_kv * (1.0 - jnp.prod(1.0 - p_head, axis=-1)), axis=-1)  # [L]
  inter = jnp.sum(get("intermediate", L, I), axis=-1)                           # [L]
  per_layer = (2 * cfg.head_dim * attn_layer * (q_heads + kv_heads)
               + 3 * mlp_layer * inter)
  return d * jnp.sum(per_layer)
