"""TPU splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) behind jshear's
attention signature: q [B, T, N, Dh], k/v [B, S, KV, Dh] (GQA native: splash's MHA kernel
maps query head h to KV head h // G), segment_ids [B, T], returns [B, T, N, Dh].

Splash is per example ([heads, seq, dim]) and unscaled, so this wrapper scales q by
1/sqrt(Dh), moves heads before the sequence, and vmaps the kernel over the batch. Its tiles
must divide the sequence and its kv compute tile must be a multiple of 128 lanes, so lengths
are padded up to a tile (a multiple of 128) and the padding gets a segment id no real token
has (max(segment_ids) + 1, or 1 without segment ids), so real rows never see it and padded
rows are never empty. Its backward is splash's own Pallas dq and dk/dv kernels.

Where it runs: TPU (compiled by Mosaic TPU). On CPU it runs in Pallas interpret mode, which
the pinned jax 0.10.2 supports for splash (checked: forward and gradients match XLA), under
the same rule as the GPU kernel (`interpret=None` -> interpret iff backend is CPU, env
JSHEAR_PALLAS_INTERPRET overrides). On GPU it raises JShearError (TPU-only kernel).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jshear.errors import JShearError
from jshear.kernels.flash_attention import interpret_default

DEFAULT_BLOCK = 512
LANES = 128


@functools.lru_cache(maxsize=64)
def _kernel(num_heads: int, q_len: int, kv_len: int, causal: bool, block_q: int,
            block_kv: int, interpret: bool):
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  shape = (q_len, kv_len)
  one = sa.CausalMask(shape) if causal else sa.FullMask(shape)
  mask = sa.MultiHeadMask([one] * num_heads)
  bs = sa.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
                     block_q_dkv=block_q, block_kv_dkv=block_kv,
                     block_kv_dkv_compute=block_kv, block_q_dq=block_q, block_kv_dq=block_kv)
  # Built eagerly (concrete mask-info arrays even when first called under a trace), so the
  # cached kernel never holds a tracer.
  with jax.ensure_compile_time_eval():
    return sa.make_splash_mha(mask, block_sizes=bs, head_shards=1, q_seq_shards=1,
                              interpret=interpret)


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def splash_attention(q, k, v, segment_ids=None, *, causal: bool = True,
                     scale: float | None = None, block: int = DEFAULT_BLOCK,
                     interpret: bool | None = None):
  backend = jax.default_backend()
  if interpret is None:
    interpret = interpret_default()
  if backend == "gpu" and not interpret:
    raise JShearError("attention_impl='splash' is the TPU splash kernel; on GPU use 'pallas', "
                      "'cudnn' or 'xla'")
  if backend == "cpu" and not interpret:
    raise JShearError("attention_impl='splash' on CPU only runs in interpret mode "
                      "(JSHEAR_PALLAS_INTERPRET=1); use attention_impl='xla'")
  B, T, N, D = q.shape
  _, S, KV, _ = k.shape
  if k.shape != v.shape or N % KV:
    raise JShearError(f"attention shapes disagree: q {q.shape}, k {k.shape}, v {v.shape}")
  if segment_ids is not None and (segment_ids.shape != (B, T) or S != T):
    raise JShearError(f"segment_ids must be [B, T] = {(B, T)} with T == S; got "
                      f"{segment_ids.shape}, S={S}")
  if block % LANES:
    raise JShearError(f"splash tile must be a multiple of {LANES}, got {block}")
  bq = min(block, _round_up(T, LANES))
  bkv = min(block, _round_up(S, LANES))
  Tp, Sp = _round_up(T, bq), _round_up(S, bkv)

  segq = segkv = None
  if segment_ids is not None or Tp != T or Sp != S:
    base_q = (jnp.zeros((B, T), jnp.int32) if segment_ids is None
              else segment_ids.astype(jnp.int32))
    pad_id = (jnp.max(base_q) + 1) if segment_ids is not None else jnp.int32(1)
    segq = jnp.pad(base_q, ((0, 0), (0, Tp - T)))
    segq = jnp.where(jnp.arange(Tp)[None] < T, segq, pad_id)
    base_kv = base_q if segment_ids is not None else jnp.zeros((B, S), jnp.int32)
    segkv = jnp.pad(base_kv, ((0, 0), (0, Sp - S)))
    segkv = jnp.where(jnp.arange(Sp)[None] < S, segkv, pad_id)

  scale = 1.0 / math.sqrt(D) if scale is None else scale
  qh = jnp.pad((q * jnp.asarray(scale, q.dtype)).transpose(0, 2, 1, 3),
               ((0, 0), (0, 0), (0, Tp - T), (0, 0)))
  kh = jnp.pad(k.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, Sp - S), (0, 0)))
  vh = jnp.pad(v.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, Sp - S), (0, 0)))
  kernel = _kernel(N, Tp, Sp, bool(causal), bq, bkv, bool(interpret))
  if segq is None:
    out = jax.vmap(kernel)(qh, kh, vh)
  else:
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds
    out = jax.vmap(lambda a, b, c, sq, sk: kernel(a, b, c, segment_ids=SegmentIds(sq, sk)))(
        qh, kh, vh, segq, segkv)
  return out[:, :, :T].transpose(0, 2, 1, 3).astype(q.dtype)
