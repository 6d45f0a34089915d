"""Building blocks shared by both block families: mask-aware norms, RoPE, SwiGLU."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jshear.model.config import ModelConfig


def _kept_mean(x, keep):
  """Mean over the last axis, counting only kept dims when a hidden mask is given."""
  if keep is None:
    return jnp.mean(x, axis=-1, keepdims=True)
  n = jnp.maximum(jnp.sum(keep), 1.0)
  return jnp.sum(x * keep, axis=-1, keepdims=True) / n


def apply_mask(x, m, ste=None):
  """x * m (m broadcasts over leading axes). With `ste` (a scalar in [0, 1]) the gradient
  w.r.t. x still reaches masked entries at weight `ste` (straight-through), so units that are
  masked out keep training: the value is exactly x * m either way."""
  y = x * m.astype(x.dtype)
  if ste is None:
    return y
  return y + (ste * (1 - m)).astype(x.dtype) * (x - jax.lax.stop_gradient(x))


def dense(x, w, n_in: int = 1, **kw):
  """Contract the last `n_in` axes of x with the first `n_in` axes of w, as one 2-D matmul
  over all tokens: [tokens, in] @ [in, out]. XLA:CPU gives batched 3-D dots' weight
  gradients transposed copies that cost ~40% of an MLP's fwd+bwd; flat tokens avoid them."""
  lead, k = x.shape[:x.ndim - n_in], math.prod(x.shape[x.ndim - n_in:])
  out = w.shape[n_in:]
  y = jnp.dot(x.reshape(-1, k), w.reshape(k, -1), **kw)
  return y.reshape(*lead, *out)


def rms_norm(x, weight, eps, hidden_mask=None, ste=None):
  """RMSNorm in fp32 (as HF does). With a hidden mask, average over kept dims only, so a
  masked model computes exactly what the smaller sliced model would."""
  dtype = x.dtype
  x = x.astype(jnp.float32)
  keep = None if hidden_mask is None else (hidden_mask != 0).astype(jnp.float32)
  var = _kept_mean(jnp.square(x), keep)
  y = x * jax.lax.rsqrt(var + eps)
  y = y.astype(dtype) * weight.astype(dtype)
  if hidden_mask is not None:
    y = apply_mask(y, hidden_mask, ste)
  return y


def layer_norm(x, weight, eps, hidden_mask=None, ste=None):
  """Bias-free LayerNorm in fp32 (Cohere/CHOP). Statistics over kept dims when masked."""
  dtype = x.dtype
  x = x.astype(jnp.float32)
  keep = None if hidden_mask is None else (hidden_mask != 0).astype(jnp.float32)
  mean = _kept_mean(x, keep)
  xc = x - mean
  var = _kept_mean(jnp.square(xc) if keep is None else jnp.square(xc * keep), keep)
  y = (xc * jax.lax.rsqrt(var + eps)) * weight.astype(jnp.float32)
  if hidden_mask is not None:
    y = apply_mask(y, hidden_mask, ste)
  return y.astype(dtype)


# ---- rotary position embeddings -----------------------------------------------------

def rope_inv_freq(cfg: ModelConfig):
  """Inverse frequencies, including HF's `linear` and `llama3` scaling."""
  dim = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  if cfg.rope_scaling is None:
    return inv
  rs = dict(cfg.rope_scaling)
  kind = rs.get("rope_type", "default")
  if kind == "linear":
    return inv / rs["factor"]
  if kind == "llama3":
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old_len = rs["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > old_len / lo, inv / factor, inv)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
    return jnp.where(medium, smoothed, scaled)
  return inv


def rope_cos_sin(cfg: ModelConfig, positions):
  """cos/sin of shape [B, T, head_dim] in fp32, laid out for the family's RoPE."""
  freqs = positions.astype(jnp.float32)[..., None] * rope_inv_freq(cfg)
  if cfg.family == "parallel":  # Cohere: interleaved pairs (x0, x1), (x2, x3), ...
    emb = jnp.repeat(freqs, 2, axis=-1)
  else:                          # LLaMA: rotate-half, first half pairs with second half
    emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin, interleaved: bool):
  """x: [B, T, N, Dh]; rotation computed in fp32 and cast back (as HF does)."""
  dtype = x.dtype
  x = x.astype(jnp.float32)
  if interleaved:
    x1, x2 = x[..., ::2], x[..., 1::2]
    rot = jnp.stack([-x2, x1], axis=-1).reshape(x.shape)
  else:
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  out = x * cos[:, :, None, :] + rot * sin[:, :, None, :]
  return out.astype(dtype)


@jax.custom_vjp
def swiglu(gate, up):
  """silu(gate) * up. The hand-written backward reuses one sigmoid for both gradients; XLA's
  derivative of silu recomputes more and was ~12% slower on a CPU MLP fwd+bwd here."""
  return jax.nn.silu(gate) * up


def _swiglu_fwd(gate, up):
  return swiglu(gate, up), (gate, up)


def _swiglu_bwd(res, dy):
  gate, up = res
  sig = jax.nn.sigmoid(gate)
  silu = gate * sig
  return dy * up * (sig + silu * (1 - sig)), dy * silu


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)
