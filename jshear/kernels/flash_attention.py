"""Pallas flash attention: tiled online-softmax forward + Pallas backward, under `custom_vjp`.

    out = flash_attention(q, k, v, segment_ids=None, causal=True)
    q [B, T, N, Dh]; k, v [B, S, KV, Dh] (N % KV == 0); segment_ids [B, T] (needs T == S)

What the kernels do
  forward  grid (B, N, T/bq): one program per query tile; loops over key tiles with an online
           softmax in fp32 (exp2 domain) and writes the output and the log-sum-exp (base 2,
           [B, N, T] fp32), the only residual besides q, k, v and the output.
  dq       grid (B, N, T/bq_dq): recomputes p = exp2(s - lse) per key tile, accumulates dq.
  dk, dv   grid (B, KV, S/bk_dkv): one program per key tile and *KV head*; loops over the
           G = N/KV query heads of its group and over query tiles, so dk/dv of a shared KV
           head are summed in registers, never materialised per query head.
  delta = rowsum(o * do) is one fused XLA op between the two, not a kernel.
  GQA is index mapping only: query head h reads KV head h // G; K/V are never repeated.
  Causal: key tiles entirely above the diagonal are not visited (forward, dq) and query tiles
  entirely before a key tile are not visited (dk/dv); tiles entirely below the diagonal run
  a mask-free loop, only tiles crossing it (or any tile with segment ids) pay for the mask.
  Causal is top-left aligned (query i sees keys j <= i), as `jax.nn.dot_product_attention`.
  Inputs in bf16/fp16 stay in that dtype for the matmuls; every accumulator, the softmax
  and lse are fp32. fp32 inputs use fp32 (IEEE) matmuls.

Lengths that are not a multiple of the tile are zero-padded up to one, and the padding is
masked: without segment ids a key-length mask in the forward; with segment ids the padding
gets the id max(segment_ids) + 1, which no real token has (padded rows then attend only to
padding, so no row is empty). Padded key rows of dk/dv and padded query rows are sliced
off; zero-padded k rows and zero output cotangents make their contributions exactly zero.

Lowering (jax 0.10.2, checked in its source)
  The kernels use the generic Pallas API (`pl.pallas_call` with BlockSpecs). On GPU they are
  lowered by the **Triton** backend, chosen explicitly with
  `jax.experimental.pallas.triton.CompilerParams(num_warps, num_stages)` (so the global
  `jax_pallas_use_mosaic_gpu` flag, whose default routes a plain `pallas_call` to Mosaic GPU,
  does not apply). Reasons: in 0.10.2 lowering a `pl.pallas_call` through Mosaic GPU emits a
  deprecation warning ("migrate to plgpu.kernel"), and Mosaic GPU kernels are Hopper-only
  and written against a different, warpgroup/TMA API; the Triton path has no deprecation in
  0.10.2 and runs on Ampere (sm80) and Hopper alike. Upstream's Pallas changelog announces
  the Triton backend as deprecated from jax 0.11, so a jax upgrade past 0.10.x will need a
  `plgpu.kernel` (Mosaic GPU, Hopper+) port of these kernels.
  Triton needs power-of-two tiles >= 16 and a power-of-two head_dim in [16, 256]; those
  limits are enforced on GPU (JShearError). On TPU this kernel is not supported: use
  `impl="splash"`.

Interpret mode (CPU)
  `interpret=None` means: interpret iff the default backend is CPU, unless the environment
  variable JSHEAR_PALLAS_INTERPRET is "1" (force) or "0" (never). Interpret mode runs the same
  kernel bodies through XLA on CPU: it checks semantics (tests), not speed. In interpret
  mode any head_dim <= 256 and any tile size is accepted.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from jshear.errors import JShearError

_log = logging.getLogger(__name__)

MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
LOG2E = math.log2(math.e)
MAX_HEAD_DIM = 256
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b
_NN = (((1,), (0,)), ((), ()))  # a @ b
_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
_logged_interpret = []


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes (rows of q / rows of k per tile) of the three kernels, and Triton launch
  parameters. `for_head_dim` gives the defaults; tiles longer than the (power-of-two rounded)
  sequence are shrunk to it, so short sequences are not padded to a full default tile."""
  block_q: int = 128
  block_k: int = 64
  block_q_dq: int = 64
  block_k_dq: int = 64
  block_q_dkv: int = 64
  block_k_dkv: int = 64
  num_warps: int = 4       # forward (Triton)
  num_warps_bwd: int = 4   # dq and dk/dv kernels (Triton)
  num_stages: int = 2

  @classmethod
  def for_head_dim(cls, head_dim: int) -> "BlockSizes":
    # Triton-era heuristics (register pressure grows with head_dim); not tuned on hardware here.
    if head_dim <= 64:
      return cls(128, 64, 64, 64, 64, 64, num_warps=4, num_warps_bwd=4)
    if head_dim <= 128:
      return cls(128, 64, 64, 64, 64, 64, num_warps=8, num_warps_bwd=8)
    return cls(64, 32, 32, 32, 32, 32, num_warps=8, num_warps_bwd=8)

  def tiles(self):
    return (self.block_q, self.block_k, self.block_q_dq, self.block_k_dq, self.block_q_dkv,
            self.block_k_dkv)


def interpret_default() -> bool:
  """True iff Pallas kernels should run interpreted here (see module docstring)."""
  env = os.environ.get("JSHEAR_PALLAS_INTERPRET", "")
  if env in ("0", "1"):
    return env == "1"
  if env:
    raise JShearError(f"JSHEAR_PALLAS_INTERPRET must be '0' or '1', got {env!r}")
  return jax.default_backend() == "cpu"


@dataclasses.dataclass(frozen=True)
class _Cfg:
  causal: bool
  scale: float
  has_seg: bool
  kv_len: int          # true key length; keys at >= kv_len are padding
  mask_kv_len: bool    # padding present and no segment ids: mask by length in the forward
  group: int           # query heads per KV head
  blocks: BlockSizes
  interpret: bool


# ---------------------------------------------------------------------------------------
# helpers used inside kernels (plain jnp / lax: lowerable by Triton and by the interpreter)

def _cdiv(a, b: int):
  return lax.div(a + (b - 1), b)


def _dot(a, b, dims):
  return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _mask(rows, cols, *, causal, segq=None, segk=None, kv_len=None):
  mask = None

  def both(a, b):
    return b if a is None else jnp.logical_and(a, b)

  if causal:
    mask = both(mask, rows[:, None] >= cols[None, :])
  if segq is not None:
    mask = both(mask, segq[:, None] == segk[None, :])
  if kv_len is not None:
    mask = both(mask, jnp.broadcast_to(cols[None, :] < kv_len, (rows.shape[0], cols.shape[0])))
  return mask


def _kv_range(i, bq: int, bk: int, nk: int, cfg: _Cfg, length_mask: bool):
  """Key tiles [0, lo) need no mask, [lo, hi) need one, >= hi are never visited, for the
  query tile i."""
  if cfg.causal:
    hi = jnp.minimum(_cdiv((i + 1) * bq, bk), nk)
  else:
    hi = jnp.int32(nk)
  if cfg.has_seg:
    return jnp.int32(0), hi
  if cfg.causal:
    lo = jnp.minimum(lax.div(i * bq + 1, bk), hi)  # tiles with last key <= first query row
  else:
    lo = hi
  if length_mask:
    lo = jnp.minimum(lo, cfg.kv_len // bk)         # the tile holding padding is masked
  return lo, hi


# ---------------------------------------------------------------------------------------
# forward

def _fwd_kernel(*refs, cfg: _Cfg, bq: int, bk: int, nk: int):
  if cfg.has_seg:
    q_ref, k_ref, v_ref, segq_ref, segk_ref, o_ref, lse_ref = refs
  else:
    q_ref, k_ref, v_ref, o_ref, lse_ref = refs
    segq_ref = segk_ref = None
  i = pl.program_id(2)
  q = q_ref[...]
  dh = q.shape[-1]
  scale2 = cfg.scale * LOG2E
  rows = i * bq + jnp.arange(bq, dtype=jnp.int32)
  segq = segq_ref[...] if cfg.has_seg else None

  def body(j, carry, masked):
    acc, m, l = carry
    k = k_ref[pl.ds(j * bk, bk), :]
    v = v_ref[pl.ds(j * bk, bk), :]
    s = _dot(q, k, _NT) * scale2
    if masked:
      cols = j * bk + jnp.arange(bk, dtype=jnp.int32)
      mask = _mask(rows, cols, causal=cfg.causal, segq=segq,
                   segk=segk_ref[pl.ds(j * bk, bk)] if cfg.has_seg else None,
                   kv_len=cfg.kv_len if cfg.mask_kv_len else None)
      if mask is not None:
        s = jnp.where(mask, s, MASK_VALUE)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    alpha = jnp.exp2(m - m_new)
    p = jnp.exp2(s - m_new[:, None])
    l = alpha * l + jnp.sum(p, axis=1)
    acc = alpha[:, None] * acc + _dot(p.astype(v.dtype), v, _NN)
    return acc, m_new, l

  init = (jnp.zeros((bq, dh), jnp.float32), jnp.full((bq,), -jnp.inf, jnp.float32),
          jnp.zeros((bq,), jnp.float32))
  lo, hi = _kv_range(i, bq, bk, nk, cfg, cfg.mask_kv_len)
  carry = lax.fori_loop(0, lo, functools.partial(body, masked=False), init)
  acc, m, l = lax.fori_loop(lo, hi, functools.partial(body, masked=True), carry)
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log2(l)


def _pallas(kernel, *, grid, in_specs, out_specs, out_shape, cfg: _Cfg, num_warps: int, name):
  kw = {}
  if not cfg.interpret:
    from jax.experimental.pallas import triton as pltriton
    kw["compiler_params"] = pltriton.CompilerParams(num_warps=num_warps,
                                                   num_stages=cfg.blocks.num_stages)
  return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                        out_shape=out_shape, interpret=cfg.interpret, name=name, **kw)


def _forward(q, k, v, seg, cfg: _Cfg):
  B, T, N, D = q.shape
  S, G = k.shape[1], cfg.group
  bq, bk = cfg.blocks.block_q, cfg.blocks.block_k
  in_specs = [
      pl.BlockSpec((None, bq, None, D), lambda b, h, i: (b, i, h, 0)),
      pl.BlockSpec((None, S, None, D), lambda b, h, i: (b, 0, lax.div(h, G), 0)),
      pl.BlockSpec((None, S, None, D), lambda b, h, i: (b, 0, lax.div(h, G), 0)),
  ]
  args = [q, k, v]
  if cfg.has_seg:
    in_specs += [pl.BlockSpec((None, bq), lambda b, h, i: (b, i)),
                 pl.BlockSpec((None, S), lambda b, h, i: (b, 0))]
    args += [seg, seg]
  out, lse = _pallas(
      functools.partial(_fwd_kernel, cfg=cfg, bq=bq, bk=bk, nk=S // bk),
      grid=(B, N, T // bq), in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, bq, None, D), lambda b, h, i: (b, i, h, 0)),
                 pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((B, N, T), jnp.float32)],
      cfg=cfg, num_warps=cfg.blocks.num_warps, name="jshear_flash_fwd")(*args)
  return out, lse


# ---------------------------------------------------------------------------------------
# backward: dq

def _dq_kernel(*refs, cfg: _Cfg, bq: int, bk: int, nk: int):
  if cfg.has_seg:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, segq_ref, segk_ref, dq_ref = refs
  else:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref = refs
    segq_ref = segk_ref = None
  i = pl.program_id(2)
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  scale2 = cfg.scale * LOG2E
  rows = i * bq + jnp.arange(bq, dtype=jnp.int32)
  segq = segq_ref[...] if cfg.has_seg else None

  def body(j, dq, masked):
    k = k_ref[pl.ds(j * bk, bk), :]
    v = v_ref[pl.ds(j * bk, bk), :]
    s = _dot(q, k, _NT) * scale2
    if masked:
      cols = j * bk + jnp.arange(bk, dtype=jnp.int32)
      mask = _mask(rows, cols, causal=cfg.causal, segq=segq,
                   segk=segk_ref[pl.ds(j * bk, bk)] if cfg.has_seg else None)
      if mask is not None:
        s = jnp.where(mask, s, MASK_VALUE)
    p = jnp.exp2(s - lse[:, None])
    dp = _dot(do, v, _NT)
    ds = p * (dp - delta[:, None])
    return dq + _dot(ds.astype(k.dtype), k, _NN)

  # Zero-padded keys need no length mask here: their k rows are 0, so ds @ k gets nothing.
  lo, hi = _kv_range(i, bq, bk, nk, cfg, length_mask=False)
  dq = jnp.zeros(q.shape, jnp.float32)
  dq = lax.fori_loop(0, lo, functools.partial(body, masked=False), dq)
  dq = lax.fori_loop(lo, hi, functools.partial(body, masked=True), dq)
  dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


# ---------------------------------------------------------------------------------------
# backward: dk, dv (one program per key tile and KV head; sums over its query-head group)

def _dkv_kernel(*refs, cfg: _Cfg, bq: int, bk: int, nq: int):
  if cfg.has_seg:
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, segq_ref, segk_ref,
     dk_ref, dv_ref) = refs
  else:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs
    segq_ref = segk_ref = None
  j = pl.program_id(2)
  k, v = k_ref[...], v_ref[...]
  scale2 = cfg.scale * LOG2E
  cols = j * bk + jnp.arange(bk, dtype=jnp.int32)
  segk = segk_ref[...] if cfg.has_seg else None

  def body(i, carry, g, masked):
    dk, dv = carry
    q = q_ref[pl.ds(i * bq, bq), g, :]
    do = do_ref[pl.ds(i * bq, bq), g, :]
    lse = lse_ref[g, pl.ds(i * bq, bq)]
    delta = delta_ref[g, pl.ds(i * bq, bq)]
    s = _dot(q, k, _NT) * scale2
    if masked:
      rows = i * bq + jnp.arange(bq, dtype=jnp.int32)
      mask = _mask(rows, cols, causal=cfg.causal,
                   segq=segq_ref[pl.ds(i * bq, bq)] if cfg.has_seg else None, segk=segk)
      if mask is not None:
        s = jnp.where(mask, s, MASK_VALUE)
    p = jnp.exp2(s - lse[:, None])
    dv = dv + _dot(p.astype(do.dtype), do, _TN)
    dp = _dot(do, v, _NT)
    ds = p * (dp - delta[:, None])
    dk = dk + _dot(ds.astype(q.dtype), q, _TN)
    return dk, dv

  # Query tiles [lo, mid) need a mask, [mid, nq) don't; tiles before lo see none of this
  # key tile. Padded query rows have do = 0 and delta = 0, so they add exactly nothing.
  if cfg.causal:
    lo = jnp.minimum(lax.div(j * bk, bq), nq)
    mid = jnp.minimum(_cdiv((j + 1) * bk - 1, bq), nq)
  else:
    lo, mid = jnp.int32(0), jnp.int32(0)
  if cfg.has_seg:
    mid = jnp.int32(nq)

  def group_body(g, carry):
    carry = lax.fori_loop(lo, mid, functools.partial(body, g=g, masked=True), carry)
    return lax.fori_loop(mid, nq, functools.partial(body, g=g, masked=False), carry)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, cfg.group, group_body, (zeros, zeros))
  dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _backward(q, k, v, seg, out, lse, do, cfg: _Cfg):
  B, T, N, D = q.shape
  S, KV = k.shape[1], k.shape[2]
  G = cfg.group
  delta = jnp.einsum("btnd,btnd->bnt", out.astype(jnp.float32), do.astype(jnp.float32))

  # dq
  bq, bk = cfg.blocks.block_q_dq, cfg.blocks.block_k_dq
  row = lambda b, h, i: (b, i, h, 0)  # noqa: E731
  kv = lambda b, h, i: (b, 0, lax.div(h, G), 0)  # noqa: E731
  in_specs = [pl.BlockSpec((None, bq, None, D), row),
              pl.BlockSpec((None, S, None, D), kv),
              pl.BlockSpec((None, S, None, D), kv),
              pl.BlockSpec((None, bq, None, D), row),
              pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i)),
              pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))]
  args = [q, k, v, do, lse, delta]
  if cfg.has_seg:
    in_specs += [pl.BlockSpec((None, bq), lambda b, h, i: (b, i)),
                 pl.BlockSpec((None, S), lambda b, h, i: (b, 0))]
    args += [seg, seg]
  dq = _pallas(functools.partial(_dq_kernel, cfg=cfg, bq=bq, bk=bk, nk=S // bk),
               grid=(B, N, T // bq), in_specs=in_specs,
               out_specs=pl.BlockSpec((None, bq, None, D), row),
               out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), cfg=cfg,
               num_warps=cfg.blocks.num_warps_bwd, name="jshear_flash_dq")(*args)

  # dk, dv: view query heads as [KV, G] (free reshapes) so a program reads its whole group.
  bq, bk = cfg.blocks.block_q_dkv, cfg.blocks.block_k_dkv
  q5, do5 = q.reshape(B, T, KV, G, D), do.reshape(B, T, KV, G, D)
  lse4, delta4 = lse.reshape(B, KV, G, T), delta.reshape(B, KV, G, T)
  grp = lambda b, h, j: (b, 0, h, 0, 0)  # noqa: E731
  kblk = lambda b, h, j: (b, j, h, 0)  # noqa: E731
  in_specs = [pl.BlockSpec((None, T, None, G, D), grp),
              pl.BlockSpec((None, bk, None, D), kblk),
              pl.BlockSpec((None, bk, None, D), kblk),
              pl.BlockSpec((None, T, None, G, D), grp),
              pl.BlockSpec((None, None, G, T), lambda b, h, j: (b, h, 0, 0)),
              pl.BlockSpec((None, None, G, T), lambda b, h, j: (b, h, 0, 0))]
  args = [q5, k, v, do5, lse4, delta4]
  if cfg.has_seg:
    in_specs += [pl.BlockSpec((None, T), lambda b, h, j: (b, 0)),
                 pl.BlockSpec((None, bk), lambda b, h, j: (b, j))]
    args += [seg, seg]
  dk, dv = _pallas(functools.partial(_dkv_kernel, cfg=cfg, bq=bq, bk=bk, nq=T // bq),
                   grid=(B, KV, S // bk), in_specs=in_specs,
                   out_specs=[pl.BlockSpec((None, bk, None, D), kblk),
                              pl.BlockSpec((None, bk, None, D), kblk)],
                   out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                              jax.ShapeDtypeStruct(v.shape, v.dtype)],
                   cfg=cfg, num_warps=cfg.blocks.num_warps_bwd, name="jshear_flash_dkv")(*args)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, seg, cfg: _Cfg):
  return _forward(q, k, v, seg, cfg)[0]


def _flash_fwd(q, k, v, seg, cfg: _Cfg):
  out, lse = _forward(q, k, v, seg, cfg)
  return out, (q, k, v, seg, out, lse)


def _flash_bwd(cfg: _Cfg, res, do):
  q, k, v, seg, out, lse = res
  dq, dk, dv = _backward(q, k, v, seg, out, lse, do, cfg)
  return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ---------------------------------------------------------------------------------------
# public entry

def _is_pow2(n: int) -> bool:
  return n > 0 and n & (n - 1) == 0


def _fit(block: int, n: int, interpret: bool) -> int:
  """Shrink a tile to the sequence (rounded up to a power of two, >= 16 off-interpret)."""
  cap = max(pl.next_power_of_2(n), 1 if interpret else 16)
  return min(block, cap)


def check_head_dim(head_dim: int, interpret: bool) -> None:
  if head_dim > MAX_HEAD_DIM:
    raise JShearError(f"pallas attention supports head_dim <= {MAX_HEAD_DIM}, got {head_dim} "
                      f"(use attention_impl='xla')")
  if not interpret and (not _is_pow2(head_dim) or head_dim < 16):
    raise JShearError(f"pallas attention on GPU (Triton) needs a power-of-two head_dim in "
                      f"[16, {MAX_HEAD_DIM}], got {head_dim} (use attention_impl='xla' or "
                      f"'cudnn')")


def flash_attention(q, k, v, segment_ids=None, *, causal: bool = True, scale: float | None = None,
                    block_sizes: BlockSizes | None = None, interpret: bool | None = None):
  """Attention with the Pallas kernels above; differentiable (dq, dk, dv by Pallas kernels).

  q [B, T, N, Dh]; k, v [B, S, KV, Dh]; segment_ids [B, T] int (packed documents; T == S).
  scale defaults to 1/sqrt(Dh). Returns [B, T, N, Dh] in q's dtype.
  """
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise JShearError(f"attention expects q [B,T,N,Dh], k/v [B,S,KV,Dh]; got {q.shape}, "
                      f"{k.shape}, {v.shape}")
  B, T, N, D = q.shape
  _, S, KV, _ = k.shape
  if k.shape != v.shape or k.shape[0] != B or k.shape[3] != D:
    raise JShearError(f"attention shapes disagree: q {q.shape}, k {k.shape}, v {v.shape}")
  if N % KV:
    raise JShearError(f"query heads ({N}) must be a multiple of key/value heads ({KV})")
  if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _DTYPES:
    raise JShearError(f"pallas attention needs q, k, v of one dtype among fp32/bf16/fp16, got "
                      f"{q.dtype}, {k.dtype}, {v.dtype}")
  if segment_ids is not None:
    if segment_ids.shape != (B, T):
      raise JShearError(f"segment_ids must be [B, T] = {(B, T)}, got {segment_ids.shape}")
    if S != T:
      raise JShearError(f"segment_ids need self-attention (T == S), got T={T}, S={S}")
  if interpret is None:
    interpret = interpret_default()
  if not interpret:
    backend = jax.default_backend()
    if backend == "cpu":
      raise JShearError("pallas attention on CPU only runs in interpret mode (interpret=True or "
                        "JSHEAR_PALLAS_INTERPRET=1); use attention_impl='xla'")
    if backend == "tpu":
      raise JShearError("the jshear pallas attention kernel targets GPUs (Triton); on TPU use "
                        "attention_impl='splash'")
  elif not _logged_interpret:
    _logged_interpret.append(True)
    _log.warning("pallas attention runs in interpret mode (testing only: correct, slow)")
  check_head_dim(D, interpret)

  bs = block_sizes or BlockSizes.for_head_dim(D)
  if not interpret:
    bad = [b for b in bs.tiles() if not _is_pow2(b) or b < 16]
    if bad:
      raise JShearError(f"pallas attention tiles must be powers of two >= 16 on GPU, got "
                        f"{bs.tiles()}")
  bs = dataclasses.replace(
      bs, block_q=_fit(bs.block_q, T, interpret), block_q_dq=_fit(bs.block_q_dq, T, interpret),
      block_q_dkv=_fit(bs.block_q_dkv, T, interpret), block_k=_fit(bs.block_k, S, interpret),
      block_k_dq=_fit(bs.block_k_dq, S, interpret),
      block_k_dkv=_fit(bs.block_k_dkv, S, interpret))
  if min(bs.tiles()) < 1:
    raise JShearError(f"pallas attention tiles must be positive, got {bs.tiles()}")
  tq = math.lcm(bs.block_q, bs.block_q_dq, bs.block_q_dkv)
  tk = math.lcm(bs.block_k, bs.block_k_dq, bs.block_k_dkv)
  if segment_ids is not None:
    tq = tk = math.lcm(tq, tk)  # one padded length: the same ids serve queries and keys
  Tp, Sp = -(-T // tq) * tq, -(-S // tk) * tk

  seg = None
  if segment_ids is not None:
    seg = segment_ids.astype(jnp.int32)
    if Tp != T:
      seg = jnp.pad(seg, ((0, 0), (0, Tp - T)), constant_values=0)
      seg = jnp.where(jnp.arange(Tp)[None, :] < T, seg, jnp.max(segment_ids) + 1)
  if Tp != T:
    q = jnp.pad(q, ((0, 0), (0, Tp - T), (0, 0), (0, 0)))
  if Sp != S:
    k = jnp.pad(k, ((0, 0), (0, Sp - S), (0, 0), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, Sp - S), (0, 0), (0, 0)))
  cfg = _Cfg(causal=bool(causal), scale=float(1.0 / math.sqrt(D) if scale is None else scale),
             has_seg=seg is not None, kv_len=S, mask_kv_len=Sp != S and seg is None,
             group=N // KV, blocks=bs, interpret=bool(interpret))
  out = _flash(q, k, v, seg, cfg)
  return out[:, :T] if Tp != T else out
