"""The one table between Hugging Face tensor names/layouts and jshear's parameters.

HF stores nn.Linear weights as [out, in]; jshear stores [in, out] with heads split out, e.g.
q_proj [H*Dh, D] <-> wq [D, H, Dh]. Both directions are pure transposes/reshapes (exact).
The parallel family is converted through its unfused per-part view (params.unfuse_layers).
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np

from jshear.model.config import ModelConfig

# jshear per-layer part -> HF per-layer suffix (after "model.layers.{i}.").
LLAMA_LAYER = {
    "attn_norm": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "mlp_norm": "post_attention_layernorm.weight",
    "w_gate": "mlp.gate_proj.weight",
    "w_up": "mlp.up_proj.weight",
    "w_down": "mlp.down_proj.weight",
    "bq": "self_attn.q_proj.bias",      # Qwen2
    "bk": "self_attn.k_proj.bias",
    "bv": "self_attn.v_proj.bias",
    "q_norm": "self_attn.q_norm.weight",  # Qwen3: [head_dim], shared by all heads
    "k_norm": "self_attn.k_norm.weight",
}
COHERE_LAYER = {
    "norm": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "q_norm": "self_attn.q_norm.weight",
    "k_norm": "self_attn.k_norm.weight",
    "w_gate": "mlp.gate_proj.weight",
    "w_up": "mlp.up_proj.weight",
    "w_down": "mlp.down_proj.weight",
}
GLOBAL = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight",
          "lm_head": "lm_head.weight"}


def layer_table(cfg: ModelConfig) -> dict[str, str]:
  table = dict(LLAMA_LAYER if cfg.family == "llama" else COHERE_LAYER)
  if not cfg.qk_norm:
    table.pop("q_norm", None)
    table.pop("k_norm", None)
  if not cfg.qkv_bias:
    for part in ("bq", "bk", "bv"):
      table.pop(part, None)
  return table


def hf_layer_name(i: int, suffix: str) -> str:
  return f"model.layers.{i}.{suffix}"


def global_table(cfg: ModelConfig) -> dict[str, str]:
  table = dict(GLOBAL)
  if cfg.tie_embeddings:
    table.pop("lm_head")
  return table


def hf_shape(cfg: ModelConfig, part: str) -> tuple[int, ...]:
  """Expected HF tensor shape for one layer's part (or a global tensor)."""
  D, H, KV, Dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  I, V = cfg.intermediate_size, cfg.vocab_size
  if part in ("q_norm", "k_norm") and cfg.family == "llama":
    return (Dh,)
  return {
      "attn_norm": (D,), "mlp_norm": (D,), "norm": (D,),
      "wq": (H * Dh, D), "wk": (KV * Dh, D), "wv": (KV * Dh, D), "wo": (D, H * Dh),
      "q_norm": (H, Dh), "k_norm": (KV, Dh), "bq": (H * Dh,), "bk": (KV * Dh,), "bv": (KV * Dh,),
      "w_gate": (I, D), "w_up": (I, D), "w_down": (D, I),
      "embed": (V, D), "final_norm": (D,), "lm_head": (V, D),
  }[part]


def to_jshear(cfg: ModelConfig, part: str, w: np.ndarray) -> np.ndarray:
  """One HF tensor -> jshear layout (per layer, without the stacked axis)."""
  D, H, KV, Dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  if part == "wq":
    return w.T.reshape(D, H, Dh)
  if part == "bq":
    return w.reshape(H, Dh)
  if part in ("bk", "bv"):
    return w.reshape(KV, Dh)
  if part in ("wk", "wv"):
    return w.T.reshape(D, KV, Dh)
  if part == "wo":
    return w.T.reshape(H, Dh, D)
  if part in ("w_gate", "w_up", "w_down", "lm_head"):
    return w.T
  return w


_WORKERS = min(8, os.cpu_count() or 1)
_POOL = None


def _pool():
  """Threads for transpose bands: numpy copies release the GIL, so bands run in parallel."""
  global _POOL
  if _POOL is None:
    _POOL = concurrent.futures.ThreadPoolExecutor(_WORKERS)
  return _POOL


def _bands(n: int, parts: int, multiple: int = 1) -> list[tuple[int, int]]:
  step = max(multiple, -(-n // parts // multiple) * multiple)
  return [(lo, min(n, lo + step)) for lo in range(0, n, step)]


def transpose_2d(w: np.ndarray, rows: int = 16) -> np.ndarray:
  """C-contiguous `w.T` of a 2-D array; moves raw bytes, so it is exact for any dtype.

  This is most of a conversion's work and numpy's own copy walks the source column by column
  (~0.3 GB/s for bf16 here). Instead: view each run of 16 bytes along a row as one element,
  transpose those 16 source rows at a time (both sides stay in cache), then split the runs
  back into columns with long contiguous copies. Both passes run in row bands on a thread
  pool. ~1.6 GB/s for bf16 on one core here (numpy's copy: ~0.3), ~2.6 on two."""
  w = np.ascontiguousarray(w)
  (R, C), size = w.shape, w.dtype.itemsize
  k = 16 // size if size <= 16 and 16 % size == 0 and C % (16 // size) == 0 else 1
  runs = w.view(np.dtype(f"V{size * k}"))  # [R, C // k]
  t = np.empty((C // k, R), runs.dtype)

  def runs_band(lo, hi):
    for i in range(lo, hi, rows):
      t[:, i:min(hi, i + rows)] = runs[i:min(hi, i + rows)].T

  list(_pool().map(lambda b: runs_band(*b), _bands(R, _WORKERS, rows)))
  if k == 1:
    return t.view(w.dtype)
  out = np.empty((C // k, k, R), np.dtype(f"V{size}"))
  split = t.view(out.dtype).reshape(C // k, R, k)

  def split_band(lo, hi):
    out[lo:hi] = split[lo:hi].transpose(0, 2, 1)

  list(_pool().map(lambda b: split_band(*b), _bands(C // k, _WORKERS)))
  return out.reshape(C, R).view(w.dtype)


def to_hf(cfg: ModelConfig, part: str, w: np.ndarray) -> np.ndarray:
  """Inverse of `to_jshear`; returns a contiguous array ready for safetensors."""
  D = cfg.hidden_size
  w = np.asarray(w)
  if part in ("wq", "wk", "wv"):
    return transpose_2d(w.reshape(D, -1))
  if part == "wo":
    return transpose_2d(w.reshape(-1, D))
  if part in ("w_gate", "w_up", "w_down", "lm_head"):
    return transpose_2d(w)
  if part in ("bq", "bk", "bv"):
    return np.ascontiguousarray(w.reshape(-1))
  return np.ascontiguousarray(w)
