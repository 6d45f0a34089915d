"""Low-rank adapters (LoRA): a pytree of their own, applied as x @ W + scale * (x @ A) @ B.

Layout (stacked over layers like the weights, same for both block families; the parallel
family's fused projections are adapted per part, on the columns / rows they own):
  {target: {"a": [L, in..., r], "b": [L, r, out...]}}   target in TARGETS
with `in...` / `out...` the projection's own input / output dims (q: a [L, D, r],
b [L, r, H, Dh]; o: a [L, H, Dh, r], b [L, r, D]). scale = alpha / rank. A starts
uniform in +-1/sqrt(fan_in) (PEFT's Kaiming default), B at zero, so a fresh adapter leaves
the model's function unchanged. Embeddings, norms and the head are never adapted.
`merge` folds W + scale * A B into the dense weights.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jshear.config_check import LORA_TARGETS as TARGETS  # noqa: F401 (defined there)
from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.model.params import fuse_layers, unfuse_layers

# target -> the (unfused) weight it adapts and how many leading axes are its input.
WEIGHT = {"q": "wq", "k": "wk", "v": "wv", "o": "wo", "gate": "w_gate", "up": "w_up",
          "down": "w_down"}
N_IN = {"o": 2}


@struct.dataclass
class Adapters:
  """What the forward takes: the adapter weights and, static, their scale and dropout rate.
  `rng` (a key) turns dropout on the adapter input on; None (evaluation) turns it off."""
  weights: dict
  rng: object = None
  scale: float = struct.field(pytree_node=False, default=1.0)
  dropout: float = struct.field(pytree_node=False, default=0.0)


def parse_targets(text) -> tuple:
  """"q,v" -> ("q", "v") in TARGETS order; refuses unknown names and an empty list."""
  names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
  names = [t for t in names if t]
  bad = [t for t in names if t not in TARGETS]
  if bad or not names:
    raise JShearError(f"lora.targets: unknown projection(s) {bad} (known: {list(TARGETS)})"
                      if bad else f"lora.targets is empty (known: {list(TARGETS)})")
  return tuple(t for t in TARGETS if t in names)


def _dims(cfg: ModelConfig) -> dict:
  """target -> (input dims, output dims, input logical axes, output logical axes)."""
  D, H, KV, Dh, I = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                     cfg.intermediate_size)
  return {
      "q": ((D,), (H, Dh), ("embed",), ("heads", "head_dim")),
      "k": ((D,), (KV, Dh), ("embed",), ("kv_heads", "head_dim")),
      "v": ((D,), (KV, Dh), ("embed",), ("kv_heads", "head_dim")),
      "o": ((H, Dh), (D,), ("heads", "head_dim"), ("embed",)),
      "gate": ((D,), (I,), ("embed",), ("mlp",)),
      "up": ((D,), (I,), ("embed",), ("mlp",)),
      "down": ((I,), (D,), ("mlp",), ("embed",)),
  }


def matrix_sizes(cfg: ModelConfig, targets) -> dict:
  """target -> (fan_in, fan_out) of the matrix it adapts."""
  return {t: (math.prod(i), math.prod(o)) for t, (i, o, _, _) in _dims(cfg).items()
          if t in targets}


def validate(cfg: ModelConfig, rank: int, targets, key: str = "lora") -> None:
  """A rank at or above a targeted matrix's smaller dimension is no longer low-rank."""
  for t, (fi, fo) in matrix_sizes(cfg, targets).items():
    if rank >= min(fi, fo):
      raise JShearError(f"config.{key}.rank={rank} must be below the smaller dimension of "
                        f"every adapted matrix, but {t} is {fi} x {fo} (rank < {min(fi, fo)})")


def adapter_shapes(cfg: ModelConfig, rank: int, targets) -> dict:
  L = cfg.num_layers
  return {t: {"a": (L, *i, rank), "b": (L, rank, *o)}
          for t, (i, o, _, _) in _dims(cfg).items() if t in targets}


# An adapter half's weight-side dims get their own logical names, which shard over fsdp as
# well as tensor: the rank axis stays replicated (sharding it costs activations), so
# without this, under pure FSDP, a half without an `embed` dim (B of q, k, v, gate, up; A of
# o, down) would sit whole on every device.
_ADAPTER_AXIS = {"head_dim": "lora_head_dim", "mlp": "lora_mlp"}


def adapter_axes(cfg: ModelConfig, targets) -> dict:
  """Logical axis names (jshear.sharding.RULES) of every adapter half."""
  name = lambda axes: tuple(_ADAPTER_AXIS.get(a, a) for a in axes)  # noqa: E731
  return {t: {"a": ("layers", *name(ia), "lora_rank"), "b": ("layers", "lora_rank", *name(oa))}
          for t, (_, _, ia, oa) in _dims(cfg).items() if t in targets}


def init_adapters(cfg: ModelConfig, rank: int, targets, rng, dtype=jnp.float32) -> dict:
  shapes = adapter_shapes(cfg, rank, targets)
  keys = jax.random.split(rng, len(shapes))
  out = {}
  for key, (t, s) in zip(keys, shapes.items()):
    bound = 1.0 / math.sqrt(math.prod(s["a"][1:-1]))
    out[t] = {"a": jax.random.uniform(key, s["a"], jnp.float32, -bound, bound).astype(dtype),
              "b": jnp.zeros(s["b"], dtype)}
  return out


def scale_of(rank: int, alpha: float) -> float:
  return float(alpha) / float(rank)


def layer_delta(ad: dict, target: str, x, scale: float, dropout: float = 0.0, rng=None):
  """scale * (drop(x) @ A) @ B for one layer's adapter `ad` ({target: {a, b}}) or None when
  `target` is not adapted. x [..., in...] -> [..., out...]."""
  if not ad or target not in ad:
    return None
  a, b = ad[target]["a"], ad[target]["b"]
  n_in = a.ndim - 1
  if rng is not None and dropout > 0:
    keep = jax.random.bernoulli(jax.random.fold_in(rng, TARGETS.index(target)), 1 - dropout,
                                x.shape)
    x = jnp.where(keep, x / (1 - dropout), 0).astype(x.dtype)
  lead, k = x.shape[:x.ndim - n_in], math.prod(x.shape[x.ndim - n_in:])
  h = jnp.dot(x.reshape(-1, k), a.reshape(k, -1))
  y = jnp.dot(h, b.reshape(b.shape[0], -1)).reshape(*lead, *b.shape[1:])
  return (y * scale).astype(x.dtype)


def _delta_weight(ad: dict, scale: float, shape) -> np.ndarray:
  """scale * A B for all layers, [L, in..., out...] in fp32."""
  a, b = (jnp.asarray(ad[k], jnp.float32) for k in ("a", "b"))
  L, r = a.shape[0], a.shape[-1]
  d = jnp.einsum("lir,lro->lio", a.reshape(L, -1, r), b.reshape(L, r, -1))
  return (scale * d).reshape(shape)


def merge(cfg: ModelConfig, params: dict, adapters: dict, scale: float) -> dict:
  """Dense params with every adapted weight replaced by W + scale * A B (computed in fp32,
  cast back to W's dtype). Works on host numpy or (inside jit) on jax arrays."""
  layers = params["layers"]
  parts = unfuse_layers(cfg, layers) if cfg.family == "parallel" else dict(layers)
  for t, ad in adapters.items():
    w = parts[WEIGHT[t]]
    parts[WEIGHT[t]] = (jnp.asarray(w, jnp.float32) + _delta_weight(ad, scale, w.shape)
                        ).astype(w.dtype)
  if cfg.family == "parallel":
    parts = {**layers, **fuse_layers(cfg, parts)}
  return {**params, "layers": parts}
