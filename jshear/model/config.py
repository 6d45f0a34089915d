"""Frozen model config, read from and written to a Hugging Face `config.json`."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from jshear.config_check import COMPUTE_DTYPES, FAMILIES, REMAT_POLICIES  # noqa: F401 (defined there)
from jshear.errors import JShearError, check

# HF model_type -> jshear block family.
_FAMILY_OF_MODEL_TYPE = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama",
                         "cohere": "parallel"}
_ROPE_TYPES = ("default", "linear", "llama3")


def compute_dtype(name):
  """The one parser of a compute dtype name (config.model.compute_dtype, eval --dtype):
  None for float32 (compute in the params' dtype), else the jnp dtype."""
  name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(name, name)
  if name in ("", "float32", None):
    return None
  if name not in COMPUTE_DTYPES:
    raise JShearError(f"compute dtype {name!r} is not one of {list(COMPUTE_DTYPES)}")
  import jax.numpy as jnp
  return jnp.dtype(name)


# The config.model.* keys that shape a model built from scratch (the pretrain stage, the
# planner, compare's from-scratch row): one list.
SHAPE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
              "num_kv_heads", "head_dim", "family", "qk_norm", "tie_embeddings", "rope_theta")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of one model. `family` picks the block layout.

  llama:    x += attn(rmsnorm(x)); x += mlp(rmsnorm(x))      (LLaMA/Mistral/SmolLM2/Qwen)
  parallel: h = layernorm(x); x += attn(h) + mlp(h)          (PaLM/CHOP, exported as Cohere)

  Qwen sources are llama-family models with qkv_bias (Qwen2/2.5) or qk_norm (Qwen3); the
  export architecture follows from these two flags (`hf_model_type`).
  """
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  family: str = "llama"
  norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  # Hashable form of HF's rope scaling dict, e.g. (("factor", 8.0), ("rope_type", "llama3"), ...).
  rope_scaling: tuple | None = None
  tie_embeddings: bool = False
  max_position_embeddings: int = 4096
  # parallel family: LayerNorm on q and k with a weight per head [H|KV, Dh] (Cohere);
  # llama family: RMSNorm on q and k with one weight [Dh] shared by all heads (Qwen3).
  qk_norm: bool = False
  qkv_bias: bool = False        # llama family: biases on the q, k, v projections (Qwen2)
  logit_scale: float = 1.0      # parallel family (Cohere): logits *= logit_scale
  bos_token_id: int | None = 1
  eos_token_id: int | None = 2
  # Keep the projections' outputs, recompute norms, RoPE and attention in the backward: less
  # to store and reload than saving everything ("none"), which made the SmolLM2 CPU step ~6%
  # slower. "full" recomputes every matmul (least memory); "dots" also keeps attention's.
  remat: str = "dots_no_batch"  # one of REMAT_POLICIES
  attention_impl: str = "xla"
  scan_layers: bool = True

  def __post_init__(self):
    check(self.family in FAMILIES,
          f"model.family must be 'llama' or 'parallel', got {self.family!r}")
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim"):
      check(getattr(self, name) > 0, f"model.{name} must be positive, got {getattr(self, name)}")
    check(self.num_heads % self.num_kv_heads == 0,
          f"model.num_heads ({self.num_heads}) must be divisible by model.num_kv_heads "
          f"({self.num_kv_heads})")
    check(self.head_dim % 2 == 0, f"model.head_dim must be even for RoPE, got {self.head_dim}")
    check(not (self.qkv_bias and self.family != "llama"),
          "model.qkv_bias is only supported for the llama family")
    check(not (self.qkv_bias and self.qk_norm),
          "model.qkv_bias with model.qk_norm has no export target (Qwen2 has biases, Qwen3 norms)")
    check(self.remat in REMAT_POLICIES, f"model.remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
    if self.rope_scaling is not None:
      rope_type = dict(self.rope_scaling).get("rope_type", "default")
      check(rope_type in _ROPE_TYPES,
            f"rope_scaling type {rope_type!r} is not supported (supported: {_ROPE_TYPES})")

  @property
  def group_size(self) -> int:
    """Query heads per KV head."""
    return self.num_heads // self.num_kv_heads

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  # ---- parameter counts -------------------------------------------------------------
  def layer_params(self) -> int:
    d, dh = self.hidden_size, self.head_dim
    attn = d * dh * (2 * self.num_heads + 2 * self.num_kv_heads)
    mlp = 3 * d * self.intermediate_size
    norms = 2 * d if self.family == "llama" else d
    if self.qk_norm:
      norms += 2 * dh if self.family == "llama" else (self.num_heads + self.num_kv_heads) * dh
    bias = (self.num_heads + 2 * self.num_kv_heads) * dh if self.qkv_bias else 0
    return attn + mlp + norms + bias

  @property
  def hf_model_type(self) -> str:
    """The transformers architecture this model exports as."""
    if self.family == "parallel":
      return "cohere"
    return "qwen3" if self.qk_norm else "qwen2" if self.qkv_bias else "llama"

  def non_embedding_params(self) -> int:
    """Every parameter except embeddings / LM head (the count pruning targets use)."""
    return self.num_layers * self.layer_params() + self.hidden_size

  def num_params(self) -> int:
    emb = self.vocab_size * self.hidden_size
    return self.non_embedding_params() + emb * (1 if self.tie_embeddings else 2)

  # ---- Hugging Face config.json ------------------------------------------------------
  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], **overrides) -> "ModelConfig":
    model_type = hf.get("model_type")
    if model_type not in _FAMILY_OF_MODEL_TYPE:
      raise JShearError(f"unsupported model_type {model_type!r} in config.json "
                        f"(supported: {sorted(_FAMILY_OF_MODEL_TYPE)})")
    family = _FAMILY_OF_MODEL_TYPE[model_type]
    for key in ("attention_bias", "mlp_bias"):
      check(not hf.get(key, False), f"config.json has {key}=true; jshear models have biases "
            "only on q, k and v, as Qwen2 (model_type 'qwen2')")
    if model_type == "mistral":
      sw = hf.get("sliding_window")
      check(sw is None or sw >= hf.get("max_position_embeddings", 0),
            f"sliding-window attention (sliding_window={sw}) is not supported")
    if model_type in ("qwen2", "qwen3"):
      _check_qwen_window(hf)
    act = hf.get("hidden_act", "silu")
    check(act == "silu", f"hidden_act {act!r} is not supported (only 'silu' / SwiGLU)")
    heads = hf["num_attention_heads"]
    kv = hf.get("num_key_value_heads") or heads
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    rope = dict(hf.get("rope_parameters") or {})
    # transformers<5 kept theta at the top level and scaling in rope_scaling.
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    if hf.get("rope_scaling"):
      rope.update(hf["rope_scaling"])
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    rope.pop("type", None)
    rope["rope_type"] = rope_type
    rope_scaling = None if rope_type == "default" else tuple(sorted(rope.items()))
    if family == "parallel":
      default_tie, eps = True, hf.get("layer_norm_eps", 1e-5)
    else:
      default_tie, eps = False, hf.get("rms_norm_eps", 1e-5)
    kw = dict(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
        num_heads=heads, num_kv_heads=kv, head_dim=head_dim, family=family, norm_eps=eps,
        rope_theta=float(theta), rope_scaling=rope_scaling,
        tie_embeddings=bool(hf.get("tie_word_embeddings", default_tie)),
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        qk_norm=bool(hf.get("use_qk_norm", False)) or model_type == "qwen3",
        qkv_bias=model_type == "qwen2",
        logit_scale=float(hf.get("logit_scale", 1.0)) if family == "parallel" else 1.0,
        bos_token_id=_first(hf.get("bos_token_id")), eos_token_id=_first(hf.get("eos_token_id")))
    kw.update(overrides)
    return cls(**kw)

  def to_hf_dict(self) -> dict[str, Any]:
    rope = {"rope_type": "default", "rope_theta": self.rope_theta}
    if self.rope_scaling is not None:
      rope.update(dict(self.rope_scaling))
      rope["rope_theta"] = self.rope_theta
    common = dict(
        vocab_size=self.vocab_size, hidden_size=self.hidden_size,
        intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
        num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads,
        max_position_embeddings=self.max_position_embeddings, hidden_act="silu",
        tie_word_embeddings=self.tie_embeddings, rope_parameters=rope,
        attention_bias=False, bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id)
    kind = self.hf_model_type
    if kind == "llama":
      return dict(common, model_type="llama", architectures=["LlamaForCausalLM"],
                  rms_norm_eps=self.norm_eps, head_dim=self.head_dim, mlp_bias=False)
    if kind in ("qwen2", "qwen3"):
      # Qwen2Config has no head_dim field, but Qwen2's attention reads one when present.
      if kind == "qwen2":
        common.pop("attention_bias")  # not a Qwen2 field: its q/k/v always have biases
      return dict(common, model_type=kind, architectures=[_QWEN_ARCH[kind]],
                  rms_norm_eps=self.norm_eps, head_dim=self.head_dim, use_sliding_window=False,
                  sliding_window=None, max_window_layers=self.num_layers,
                  layer_types=["full_attention"] * self.num_layers)
    # Cohere reads an explicit head_dim when present (else hidden_size // heads).
    return dict(common, model_type="cohere", architectures=["CohereForCausalLM"],
                head_dim=self.head_dim,
                layer_norm_eps=self.norm_eps, use_qk_norm=self.qk_norm,
                logit_scale=self.logit_scale)

  @classmethod
  def from_hf_dir(cls, path: str, **overrides) -> "ModelConfig":
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
      raise JShearError(f"{cfg_path} not found: not a Hugging Face model directory")
    with open(cfg_path) as f:
      return cls.from_hf_dict(json.load(f), **overrides)

  # ---- jshear's own serialisation ----------------------------------------------------
  def to_json(self) -> str:
    d = dataclasses.asdict(self)
    d["rope_scaling"] = None if self.rope_scaling is None else dict(self.rope_scaling)
    return json.dumps(d, indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "ModelConfig":
    d = json.loads(text)
    if d.get("rope_scaling") is not None:
      d["rope_scaling"] = tuple(sorted(d["rope_scaling"].items()))
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    check(not unknown, f"unknown model config keys {sorted(unknown)}")
    return cls(**d)


_QWEN_ARCH = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def _check_qwen_window(hf: dict) -> None:
  """Refuse a sliding window that changes attention (jshear attends over the whole causal
  context). As transformers does: the window exists only with use_sliding_window, and it
  applies to the layers that `layer_types` (else max_window_layers) marks as sliding."""
  window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
  max_pos = hf.get("max_position_embeddings", 32768)
  if window is None or window >= max_pos:
    return  # no window, or one no sequence within max_position_embeddings reaches
  n = hf["num_hidden_layers"]
  types = hf.get("layer_types") or [
      "sliding_attention" if i >= hf.get("max_window_layers", 28) else "full_attention"
      for i in range(n)]
  sliding = [i for i, t in enumerate(types) if t == "sliding_attention"]
  field = "layer_types" if hf.get("layer_types") else "max_window_layers"
  check(not sliding,
        f"config.json enables sliding-window attention (use_sliding_window=true, sliding_window="
        f"{window} < max_position_embeddings={max_pos}, {field} makes layers {sliding} sliding); "
        "jshear implements full causal attention only")


def _first(x):
  return x[0] if isinstance(x, (list, tuple)) else x
