"""The one attention entry point used by both block families; the implementation is chosen by
config, and the XLA reference path works on every backend."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp

from jshear.errors import JShearError

IMPLS = ("xla", "cudnn", "pallas", "splash", "auto")
_log = logging.getLogger(__name__)
_logged_choice: set = set()


def _segment_mask(segment_ids):
  """[B, T] ids -> [B, 1, T, T] boolean: attend only within one packed document."""
  if segment_ids is None:
    return None
  return (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]


def xla_attention(q, k, v, *, causal=True, segment_ids=None):
  """Reference path. q [B, T, N, Dh]; k, v [B, S, KV, Dh] with N % KV == 0 (GQA native)."""
  return jax.nn.dot_product_attention(
      q, k, v, mask=_segment_mask(segment_ids), is_causal=causal, implementation="xla")


def _resolve(impl: str, q) -> str:
  if impl not in IMPLS:
    raise JShearError(f"model.attention_impl must be one of {IMPLS}, got {impl!r}")
  if impl != "auto":
    return impl
  backend = jax.default_backend()
  choice = "cudnn" if backend == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16) else "xla"
  if (backend, choice) not in _logged_choice:
    _logged_choice.add((backend, choice))
    _log.info("attention_impl=auto chose %r on backend %r", choice, backend)
  return choice


def attention(q, k, v, *, causal=True, segment_ids=None, impl="xla"):
  impl = _resolve(impl, q)
  if impl == "xla":
    return xla_attention(q, k, v, causal=causal, segment_ids=segment_ids)
  if impl == "cudnn":
    if jax.default_backend() != "gpu":
      raise JShearError(f"attention_impl='cudnn' needs a GPU; this backend is "
                        f"{jax.default_backend()!r} (use 'xla' or 'auto')")
    return jax.nn.dot_product_attention(
        q, k, v, mask=_segment_mask(segment_ids), is_causal=causal, implementation="cudnn")
  raise JShearError(f"attention_impl={impl!r} is not available in this build (use 'xla')")
