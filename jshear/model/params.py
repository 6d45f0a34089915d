"""Parameter layout: shapes, logical axis names and initialisation, for both families.

Weights are stacked over layers (leading axis `layers`) so the layer loop is one `scan`.
Every weight carries logical axis names; `jshear.sharding` maps them onto the mesh.

llama family (per layer):   attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down,
                             bq, bk, bv (when qkv_bias), q_norm, k_norm [Dh] (when qk_norm)
parallel family (per layer): norm, w_in (q|k|v|gate|up fused), w_out (attn-out|down fused),
                             q_norm, k_norm (when qk_norm)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jshear.model.config import ModelConfig


def fused_in_sizes(cfg: ModelConfig) -> list[tuple[str, int]]:
  """Column blocks of the parallel family's fused input projection, in order."""
  h, kv, dh, i = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
  return [("wq", h * dh), ("wk", kv * dh), ("wv", kv * dh), ("w_gate", i), ("w_up", i)]


def param_axes(cfg: ModelConfig) -> dict:
  """Logical axis names of every parameter (same tree structure as the params)."""
  if cfg.family == "llama":
    layers = {
        "attn_norm": ("layers", "norm"),
        "wq": ("layers", "embed", "heads", "head_dim"),
        "wk": ("layers", "embed", "kv_heads", "head_dim"),
        "wv": ("layers", "embed", "kv_heads", "head_dim"),
        "wo": ("layers", "heads", "head_dim", "embed"),
        "mlp_norm": ("layers", "norm"),
        "w_gate": ("layers", "embed", "mlp"),
        "w_up": ("layers", "embed", "mlp"),
        "w_down": ("layers", "mlp", "embed"),
    }
    if cfg.qkv_bias:
      layers["bq"] = ("layers", "heads", "head_dim")
      layers["bk"] = ("layers", "kv_heads", "head_dim")
      layers["bv"] = ("layers", "kv_heads", "head_dim")
    if cfg.qk_norm:  # one weight shared by all heads
      layers["q_norm"] = ("layers", "head_dim")
      layers["k_norm"] = ("layers", "head_dim")
  else:
    layers = {
        "norm": ("layers", "norm"),
        "w_in": ("layers", "embed", "fused"),
        "w_out": ("layers", "fused", "embed"),
    }
    if cfg.qk_norm:
      layers["q_norm"] = ("layers", "heads", "head_dim")
      layers["k_norm"] = ("layers", "kv_heads", "head_dim")
  axes = {"embed": ("vocab", "embed"), "layers": layers, "final_norm": ("norm",)}
  if not cfg.tie_embeddings:
    axes["lm_head"] = ("embed", "vocab")
  return axes


def param_shapes(cfg: ModelConfig) -> dict:
  L, D, H, KV = cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads
  Dh, I, V = cfg.head_dim, cfg.intermediate_size, cfg.vocab_size
  if cfg.family == "llama":
    layers = {
        "attn_norm": (L, D), "wq": (L, D, H, Dh), "wk": (L, D, KV, Dh), "wv": (L, D, KV, Dh),
        "wo": (L, H, Dh, D), "mlp_norm": (L, D), "w_gate": (L, D, I), "w_up": (L, D, I),
        "w_down": (L, I, D),
    }
    if cfg.qkv_bias:
      layers.update(bq=(L, H, Dh), bk=(L, KV, Dh), bv=(L, KV, Dh))
    if cfg.qk_norm:
      layers.update(q_norm=(L, Dh), k_norm=(L, Dh))
  else:
    fused = sum(n for _, n in fused_in_sizes(cfg))
    layers = {"norm": (L, D), "w_in": (L, D, fused), "w_out": (L, H * Dh + I, D)}
    if cfg.qk_norm:
      layers["q_norm"] = (L, H, Dh)
      layers["k_norm"] = (L, KV, Dh)
  shapes = {"embed": (V, D), "layers": layers, "final_norm": (D,)}
  if not cfg.tie_embeddings:
    shapes["lm_head"] = (D, V)
  return shapes


def _is_norm(path) -> bool:
  return "norm" in jax.tree_util.keystr(path)


def _is_bias(path) -> bool:
  return getattr(path[-1], "key", None) in ("bq", "bk", "bv")


def init_params(cfg: ModelConfig, rng, dtype=jnp.float32, std: float = 0.02) -> dict:
  """Random init for pretraining from scratch: norms at one, biases at zero, matrices N(0, std)."""
  shapes = param_shapes(cfg)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(
      shapes, is_leaf=lambda x: isinstance(x, tuple))
  keys = jax.random.split(rng, len(leaves))
  out = []
  for key, (path, shape) in zip(keys, leaves):
    if _is_norm(path):
      out.append(jnp.ones(shape, dtype))
    elif _is_bias(path):
      out.append(jnp.zeros(shape, dtype))
    else:
      out.append((std * jax.random.normal(key, shape, jnp.float32)).astype(dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def abstract_params(cfg: ModelConfig, dtype=jnp.float32) -> dict:
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, dtype), param_shapes(cfg),
                      is_leaf=lambda x: isinstance(x, tuple))


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


# ---- the parallel family's fused projections, viewed per part ------------------------

def unfuse_layers(cfg: ModelConfig, layers: dict, xp=jnp) -> dict:
  """Parallel-family stacked layers -> separate per-part weights in the llama layout
  (wq [L,D,H,Dh], ..., wo [L,H,Dh,D], w_down [L,I,D]) plus norm/q_norm/k_norm."""
  L, D = cfg.num_layers, cfg.hidden_size
  H, KV, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  out, start = {}, 0
  for name, n in fused_in_sizes(cfg):
    out[name] = layers["w_in"][:, :, start:start + n]
    start += n
  out["wq"] = out["wq"].reshape(L, D, H, Dh)
  out["wk"] = out["wk"].reshape(L, D, KV, Dh)
  out["wv"] = out["wv"].reshape(L, D, KV, Dh)
  out["wo"] = layers["w_out"][:, :H * Dh].reshape(L, H, Dh, D)
  out["w_down"] = layers["w_out"][:, H * Dh:]
  for name in ("norm", "q_norm", "k_norm"):
    if name in layers:
      out[name] = layers[name]
  return out


def fuse_layers(cfg: ModelConfig, parts: dict, xp=jnp) -> dict:
  """Inverse of `unfuse_layers` (xp = numpy for host-side conversion)."""
  L, D = cfg.num_layers, cfg.hidden_size
  cols = [parts[name].reshape(L, D, -1) for name, _ in fused_in_sizes(cfg)]
  out = {
      "norm": parts["norm"],
      "w_in": xp.concatenate(cols, axis=2),
      "w_out": xp.concatenate([parts["wo"].reshape(L, -1, D), parts["w_down"]], axis=1),
  }
  for name in ("q_norm", "k_norm"):
    if name in parts:
      out[name] = parts[name]
  return out
