"""The one attention entry point used by both block families; the implementation is chosen by
config, and the XLA reference path works on every backend.

    attention(q, k, v, *, causal, segment_ids, impl)
    q [B, T, N, Dh]; k, v [B, S, KV, Dh] with N % KV == 0 (GQA native, K/V never repeated);
    segment_ids [B, T] (packed documents attend only within themselves); -> [B, T, N, Dh]

impl
  xla     plain XLA ops, the maths of `jax.nn.dot_product_attention`; every backend.
  cudnn   cuDNN flash attention via `jax.nn.dot_product_attention`; GPU only (JShearError
          elsewhere).
  pallas  jshear's Pallas flash attention (`jshear.kernels.flash_attention`): GPU via the
          Triton lowering; on CPU it runs in Pallas interpret mode (tests; slow); TPU: error.
  splash  TPU splash attention (`jshear.kernels.splash`); on CPU interpret mode; GPU: error.
  auto    GPU: cudnn for bf16/fp16 without segment ids and head_dim <= 128 (multiple of 8),
          else pallas when its head_dim limits allow, else xla; TPU: splash; CPU: xla.
          The choice is logged once per (backend, choice).

Sharding: pallas and splash are custom calls XLA cannot partition, so when a mesh is active
(`jax.set_mesh(mesh)`, seen through `jax.sharding.get_abstract_mesh()`) or passed as `mesh=`,
they run under `jax.shard_map`: batch split over the ("data", "fsdp") axes and heads over
"tensor" (only axes that divide B, resp. both N and KV; others replicate). Without a mesh they
run as is (single device, or GSPMD would gather their inputs). xla and cudnn partition by
themselves and ignore the mesh.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jshear.config_check import ATTENTION_IMPLS as IMPLS  # noqa: F401 (defined there)
from jshear.errors import JShearError

BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "tensor"
_log = logging.getLogger(__name__)
_logged_choice: set = set()


def _segment_mask(segment_ids):
  """[B, T] ids -> [B, 1, T, T] boolean: attend only within one packed document."""
  if segment_ids is None:
    return None
  return (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]


def xla_attention(q, k, v, *, causal=True, segment_ids=None, mask=None):
  """Reference path. q [B, T, N, Dh]; k, v [B, S, KV, Dh] with N % KV == 0 (GQA native);
  mask: optional bool [B, T, S], True = may attend (inference's explicit masks).

  Same maths as `jax.nn.dot_product_attention(implementation="xla")` (scores and softmax in
  fp32, causal top-left aligned), laid out as [B, KV, G*T, Dh] so each KV head's G query
  heads share one plain batched matmul: XLA:CPU ran the fwd+bwd ~1.8x faster this way."""
  B, T, N, Dh = q.shape
  S, KV = k.shape[1], k.shape[2]
  G = N // KV
  f32 = jnp.promote_types(q.dtype, jnp.float32)
  qg = q.reshape(B, T, KV, G, Dh).transpose(0, 2, 3, 1, 4).reshape(B, KV, G * T, Dh)
  kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  s = jnp.einsum("bkqd,bksd->bkqs", qg, kh, preferred_element_type=f32).reshape(B, KV, G, T, S)
  s = s * jnp.asarray(Dh ** -0.5, f32)
  keep = None
  if causal:
    keep = jnp.arange(T)[:, None] >= jnp.arange(S)[None, :]
  if segment_ids is not None:
    same = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None, None]
    keep = same if keep is None else same & keep
  if mask is not None:
    keep = mask[:, None, None] if keep is None else mask[:, None, None] & keep
  if keep is not None:
    s = jnp.where(keep, s, jnp.asarray(-0.7 * jnp.finfo(jnp.float32).max, f32))
  p = jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(v.dtype).reshape(B, KV, G * T, S)
  out = jnp.einsum("bkqs,bksd->bkqd", p, vh)
  return out.reshape(B, KV, G, T, Dh).transpose(0, 3, 1, 2, 4).reshape(B, T, N, Dh)


def _pallas_head_dim_ok(d: int) -> bool:
  return 16 <= d <= 256 and d & (d - 1) == 0


def choose_impl(backend: str, dtype, head_dim: int, has_segments: bool) -> str:
  """What `auto` picks for a backend and shape (pure; see the module docstring)."""
  if backend == "gpu":
    if (jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        and not has_segments and head_dim <= 128 and head_dim % 8 == 0):
      return "cudnn"
    return "pallas" if _pallas_head_dim_ok(head_dim) else "xla"
  if backend == "tpu":
    return "splash"
  return "xla"


def _resolve(impl: str, q, segment_ids=None) -> str:
  if impl not in IMPLS:
    raise JShearError(f"model.attention_impl must be one of {IMPLS}, got {impl!r}")
  if impl != "auto":
    return impl
  backend = jax.default_backend()
  choice = choose_impl(backend, q.dtype, q.shape[-1], segment_ids is not None)
  if (backend, choice) not in _logged_choice:
    _logged_choice.add((backend, choice))
    _log.info("attention_impl=auto chose %r on backend %r", choice, backend)
  return choice


def _shard_plan(mesh, B: int, N: int, KV: int):
  """(manual axis names, batch spec entry, head spec entry) or None when nothing to split."""
  manual = set(getattr(mesh, "manual_axes", ()) or ())
  free = [a for a in mesh.axis_names if a not in manual]
  if not free:
    return None
  shape = dict(mesh.shape)
  batch, size = [], 1
  for a in BATCH_AXES:
    if a in free and shape[a] > 1 and B % (size * shape[a]) == 0:
      batch.append(a)
      size *= shape[a]
  head = None
  t = shape.get(HEAD_AXIS, 1)
  if HEAD_AXIS in free and t > 1 and N % t == 0 and KV % t == 0:
    head = HEAD_AXIS
  if not batch and head is None:
    return None
  bspec = None if not batch else (batch[0] if len(batch) == 1 else tuple(batch))
  return frozenset(free), bspec, head


def sharded_call(fn, q, k, v, segment_ids=None, mesh=None):
  """Run fn(q, k, v, segment_ids) under shard_map over batch and head axes of the mesh (the
  given one, else the active one); plain call when there is none."""
  mesh_for_map = mesh
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
      return fn(q, k, v, segment_ids)
  B, _, N, _ = q.shape
  plan = _shard_plan(mesh, B, N, k.shape[2])
  if plan is None:
    return fn(q, k, v, segment_ids)
  axis_names, bspec, head = plan
  qspec = P(bspec, None, head, None)
  if segment_ids is None:
    body, args, in_specs = (lambda a, b, c: fn(a, b, c, None)), (q, k, v), (qspec,) * 3
  else:
    body, args = fn, (q, k, v, segment_ids)
    in_specs = (qspec,) * 3 + (P(bspec, None),)
  mapped = jax.shard_map(body, mesh=mesh_for_map, in_specs=in_specs, out_specs=qspec,
                         axis_names=axis_names, check_vma=False)
  return mapped(*args)


def attention(q, k, v, *, causal=True, segment_ids=None, impl="xla", mesh=None,
              block_sizes=None):
  """See the module docstring. `block_sizes` (a `jshear.kernels.BlockSizes`) tunes pallas."""
  impl = _resolve(impl, q, segment_ids)
  backend = jax.default_backend()
  if impl == "xla":
    return xla_attention(q, k, v, causal=causal, segment_ids=segment_ids)
  if impl == "cudnn":
    if backend != "gpu":
      raise JShearError(f"attention_impl='cudnn' needs a GPU; this backend is "
                        f"{backend!r} (use 'xla' or 'auto')")
    return jax.nn.dot_product_attention(
        q, k, v, mask=_segment_mask(segment_ids), is_causal=causal, implementation="cudnn")
  if impl == "pallas":
    from jshear.kernels import flash_attention
    if backend == "tpu":
      raise JShearError("attention_impl='pallas' is jshear's GPU (Triton) kernel; on TPU use "
                        "'splash' or 'auto'")
    fn = functools.partial(_call_flash, flash_attention, causal, block_sizes)
    return sharded_call(fn, q, k, v, segment_ids, mesh)
  if impl == "splash":
    from jshear.kernels import splash_attention
    if backend == "gpu":
      raise JShearError("attention_impl='splash' is the TPU splash kernel; on GPU use "
                        "'pallas', 'cudnn' or 'auto'")
    fn = functools.partial(_call_splash, splash_attention, causal)
    return sharded_call(fn, q, k, v, segment_ids, mesh)
  raise AssertionError(impl)


def _call_flash(kernel, causal, block_sizes, q, k, v, segment_ids):
  return kernel(q, k, v, segment_ids, causal=causal, block_sizes=block_sizes)


def _call_splash(kernel, causal, q, k, v, segment_ids):
  return kernel(q, k, v, segment_ids, causal=causal)


def attention_flops(B: int, T: int, S: int, N: int, D: int, causal: bool) -> float:
  """Matmul FLOPs of one forward (2 matmuls of 2*T*S*D per head), halved when causal."""
  f = 4.0 * B * N * T * S * D
  return f / 2 if causal else f


__all__ = ["IMPLS", "attention", "attention_flops", "choose_impl", "sharded_call",
           "xla_attention"]
