"""Attention kernels against the XLA reference, in Pallas interpret mode on CPU.

Forward outputs and dq, dk, dv of `pallas` match `xla` within 2e-5 (fp32; absolute) / 2e-2
(bf16; relative to the tensor's largest magnitude, as bf16 has ~3 significant digits) over
a covering grid of head_dim {64, 128} x {MHA, GQA 8q/2kv} x {causal, not} x {packed
segments, none} x {lengths that are / aren't multiples of the tile}; a sharded run on the
8 fake devices equals the unsharded one; splash runs in interpret mode; the full tiny model
(llama with attention_impl="pallas", parallel with "splash") equals "xla" forward and
backward; the kernels lower for CUDA through Triton (jax -> Triton IR; no GPU needed).
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jshear.errors import JShearError
from jshear.kernels import BlockSizes, flash_attention, splash_attention
from jshear.model import attention as attn_mod
from jshear.model.attention import attention, choose_impl, xla_attention
from jshear.model.config import ModelConfig
from jshear.model.params import init_params
from jshear.model.transformer import forward

# Interpret-mode kernels are XLA while-loops: compiling them dominates test time, and the
# CPU backend's optimisation passes (not needed for correctness checks) cost ~3x.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
SMALL = BlockSizes(16, 16, 16, 16, 16, 16)
QTALL = BlockSizes(32, 16, 32, 16, 32, 16)
MIXED = BlockSizes(block_q=32, block_k=16, block_q_dq=16, block_k_dq=32, block_q_dkv=32,
                   block_k_dkv=16)


def _inputs(B, T, N, KV, D, dtype, S=None, seed=0):
  S = T if S is None else S
  rng = np.random.default_rng(seed)  # numpy: no per-shape compile
  shapes = [(B, T, N, D), (B, S, KV, D), (B, S, KV, D), (B, T, N, D)]
  return [jnp.asarray(rng.standard_normal(s, np.float32)).astype(dtype) for s in shapes]


def _segments(B, T):
  """Three packed documents per row, boundaries differing between rows."""
  rows = []
  for b in range(B):
    cut1, cut2 = T // 3 + b, (2 * T) // 3 - b
    rows.append(np.repeat([0, 1, 2], [cut1, cut2 - cut1, T - cut2]))
  return jnp.asarray(np.stack(rows), jnp.int32)


def _fwd_bwd(fn, q, k, v, ct):
  def both(q, k, v, ct):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out, *vjp(ct))
  return [np.asarray(x, np.float32)
          for x in jax.jit(both, compiler_options=FAST_COMPILE)(q, k, v, ct)]


def _assert_close(got, want, tol, relative=False):
  """max |got - want| <= tol; relative=True scales tol by max(1, max |want|) (for bf16,
  where an absolute 2e-2 is less than one ulp of values above 4)."""
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    err = float(np.max(np.abs(g - w)))
    bound = tol * (max(1.0, float(np.max(np.abs(w)))) if relative else 1.0)
    assert err <= bound, f"{name}: max |pallas - xla| = {err:.3g} > {bound:.3g}"


# (B, T, N, KV, D, causal, segments, blocks, dtype): every factor value appears at least once
# combined with each value of the others that matters (causal x segments x padding x GQA).
GRID = [
    (1, 64, 8, 8, 64, True, False, SMALL, jnp.float32),     # multiple of tile
    (1, 50, 8, 2, 64, True, True, SMALL, jnp.float32),      # GQA, packed, padded
    (2, 37, 8, 2, 64, False, False, MIXED, jnp.float32),    # padded, unequal tiles
    (1, 40, 8, 8, 64, False, True, QTALL, jnp.float32),     # packed, q/k tiles pad differently
    (1, 80, 8, 2, 128, True, False, MIXED, jnp.float32),    # causal skipping, unequal tiles
    (2, 33, 8, 8, 128, True, True, MIXED, jnp.float32),     # padded + packed + causal
    (1, 64, 8, 2, 128, False, True, SMALL, jnp.float32),    # GQA packed non-causal
    (1, 50, 8, 2, 64, True, True, SMALL, jnp.bfloat16),
    (1, 64, 8, 8, 128, False, False, SMALL, jnp.bfloat16),
]


@pytest.mark.parametrize("B,T,N,KV,D,causal,packed,blocks,dtype", GRID)
def test_pallas_matches_xla(B, T, N, KV, D, causal, packed, blocks, dtype):
  q, k, v, ct = _inputs(B, T, N, KV, D, dtype)
  seg = _segments(B, T) if packed else None
  got = _fwd_bwd(lambda q, k, v: attention(q, k, v, causal=causal, segment_ids=seg,
                                           impl="pallas", block_sizes=blocks), q, k, v, ct)
  want = _fwd_bwd(lambda q, k, v: xla_attention(q, k, v, causal=causal, segment_ids=seg),
                  q, k, v, ct)
  if dtype == jnp.float32:
    _assert_close(got, want, 2e-5)
  else:
    _assert_close(got, want, 2e-2, relative=True)
    # ... and no farther from the fp32 result than bf16 rounding allows.
    f32 = [x.astype(jnp.float32) for x in (q, k, v, ct)]
    exact = _fwd_bwd(lambda q, k, v: xla_attention(q, k, v, causal=causal, segment_ids=seg),
                     *f32)
    _assert_close(got, exact, 2e-2, relative=True)


@pytest.mark.parametrize("B,T,S,N,KV,causal,packed,dtype", [
    (2, 50, 50, 8, 2, True, True, jnp.float32), (1, 24, 40, 6, 3, True, False, jnp.float32),
    (1, 40, 24, 4, 4, False, False, jnp.float32), (2, 33, 33, 8, 8, False, True, jnp.float32),
    (1, 50, 50, 8, 2, True, True, jnp.bfloat16)])
def test_xla_reference_matches_jax_dot_product_attention(B, T, S, N, KV, causal, packed, dtype):
  """jshear's grouped-layout XLA path computes what jax.nn.dot_product_attention does, values
  and gradients, for GQA, packed segments, T != S and bf16."""
  q, k, v, ct = _inputs(B, T, N, KV, 64, dtype, S=S)
  seg = _segments(B, T) if packed else None
  mask = None if seg is None else (seg[:, :, None] == seg[:, None, :])[:, None]
  got = _fwd_bwd(lambda q, k, v: xla_attention(q, k, v, causal=causal, segment_ids=seg),
                 q, k, v, ct)
  want = _fwd_bwd(lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, mask=mask, is_causal=causal, implementation="xla"), q, k, v, ct)
  tol, rel = (1e-5, False) if dtype == jnp.float32 else (1e-2, True)
  _assert_close(got, want, tol, rel)
  # An explicit [B, T, S] mask (inference's tree masks): a random one, diagonal kept.
  keep = jax.random.bernoulli(jax.random.key(1), 0.6, (B, T, S)) | jnp.eye(T, S, dtype=bool)
  got = _fwd_bwd(lambda q, k, v: xla_attention(q, k, v, causal=causal, mask=keep), q, k, v, ct)
  want = _fwd_bwd(lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, mask=keep[:, None], is_causal=causal, implementation="xla"), q, k, v, ct)
  _assert_close(got, want, tol, rel)


@pytest.mark.parametrize("T,S", [(24, 40), (40, 24)])
def test_pallas_cross_lengths_causal_top_left(T, S):
  """T != S: causal is top-left aligned like jax.nn.dot_product_attention."""
  q, k, v, ct = _inputs(1, T, 4, 2, 64, jnp.float32, S=S)
  got = _fwd_bwd(lambda q, k, v: flash_attention(q, k, v, causal=True, block_sizes=SMALL),
                 q, k, v, ct)
  want = _fwd_bwd(lambda q, k, v: xla_attention(q, k, v, causal=True), q, k, v, ct)
  _assert_close(got, want, 2e-5)


def test_triton_lowering_for_cuda(monkeypatch):
  """Cross-platform lowering (no GPU needed): all three kernels lower through the Triton
  backend (one `xla.gpu.triton` custom call each) without the Mosaic GPU deprecation warning.
  This checks jax -> Triton IR only, not Triton -> PTX or the run on a GPU."""
  import warnings
  monkeypatch.setenv("JSHEAR_PALLAS_INTERPRET", "0")
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  for dtype, d, kv, packed in [(jnp.bfloat16, 128, 2, True), (jnp.float32, 64, 8, False)]:
    q = jax.ShapeDtypeStruct((2, 200, 8, d), dtype)
    k = jax.ShapeDtypeStruct((2, 200, kv, d), dtype)
    seg = jax.ShapeDtypeStruct((2, 200), jnp.int32)

    def grads(q, k, v, s, packed=packed):
      fn = lambda q, k, v: flash_attention(q, k, v, s if packed else None)  # noqa: E731
      return jax.vjp(fn, q, k, v)[1](q)

    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      text = jax.jit(grads).trace(q, k, k, seg).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("xla.gpu.triton") == 3
    assert not [w for w in caught if "deprecated" in str(w.message)]


@pytest.mark.parametrize("impl", ["pallas", "splash"])
def test_sharded_equals_unsharded(impl):
  """On the 8 fake devices (data 2 x fsdp 2 x tensor 2) the kernel runs under shard_map,
  batch over data x fsdp and heads over tensor, and equals the unsharded run."""
  from jshear.sharding import make_mesh
  mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  B, T = 4, 40
  q, k, v, ct = _inputs(B, T, 4, 2, 16, jnp.float32)
  seg = _segments(B, T)
  fn = lambda q, k, v: attention(q, k, v, causal=True, segment_ids=seg,  # noqa: E731
                                 impl=impl, block_sizes=SMALL)
  unsharded = _fwd_bwd(fn, q, k, v, ct)
  with jax.set_mesh(mesh):
    text = jax.jit(fn).lower(q, k, v).as_text()
    sharded = _fwd_bwd(fn, q, k, v, ct)
  assert "manual_computation" in text and '{"data", "fsdp"}, {}, {"tensor"}' in text
  _assert_close(sharded, unsharded, 1e-5)
  # An explicit mesh, with no mesh active, takes the same path.
  explicit = jax.jit(lambda q, k, v: attention(q, k, v, causal=True, segment_ids=seg,
                                               impl=impl, block_sizes=SMALL, mesh=mesh),
                     compiler_options=FAST_COMPILE)
  np.testing.assert_allclose(np.asarray(explicit(q, k, v)), unsharded[0], atol=1e-5)


def test_splash_interpret_matches_xla():
  """TPU splash kernel through jshear's wrapper, in interpret mode: GQA, causal, packed,
  length 200 padded to 2 tiles of 128."""
  B, T = 1, 200
  q, k, v, ct = _inputs(B, T, 4, 2, 64, jnp.float32)
  seg = _segments(B, T)
  got = _fwd_bwd(lambda q, k, v: splash_attention(q, k, v, seg, causal=True, block=128),
                 q, k, v, ct)
  want = _fwd_bwd(lambda q, k, v: xla_attention(q, k, v, causal=True, segment_ids=seg),
                  q, k, v, ct)
  _assert_close(got, want, 2e-5)


def _tiny_model(family):
  cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=8, family=family,
                    qk_norm=family == "parallel")
  # One jitted init (eager init compiles every parameter shape separately); std 0.2 so the
  # attention patterns are far from uniform.
  init = jax.jit(init_params, static_argnums=0, static_argnames="std",
                 compiler_options=FAST_COMPILE)
  return cfg, init(cfg, jax.random.key(0), std=0.2)


@pytest.mark.parametrize("family,impl", [("llama", "pallas"), ("parallel", "splash")])
def test_model_forward_backward_matches_xla(family, impl):
  cfg, params = _tiny_model(family)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 64, (2, 20)), jnp.int32)
  seg = _segments(2, 20)

  def loss(p, c):
    logits = forward(p, tokens, cfg=c, segment_ids=seg)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

  grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1,
                 compiler_options=FAST_COMPILE)
  g_ref, l_ref = grad(params, cfg.replace(attention_impl="xla"))
  g, lg = grad(params, cfg.replace(attention_impl=impl))
  np.testing.assert_allclose(np.asarray(lg), np.asarray(l_ref), atol=2e-5, rtol=0)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=0,
                               err_msg=jax.tree_util.keystr(path))


# --------------------------------------------------------------------------------------------
# selection and errors (no kernel runs)

def test_auto_choice_and_logs_once(caplog):
  assert choose_impl("gpu", jnp.bfloat16, 128, False) == "cudnn"
  assert choose_impl("gpu", jnp.bfloat16, 128, True) == "pallas"
  assert choose_impl("gpu", jnp.float32, 64, False) == "pallas"
  assert choose_impl("gpu", jnp.float32, 96, False) == "xla"
  assert choose_impl("tpu", jnp.bfloat16, 128, False) == "splash"
  assert choose_impl("cpu", jnp.bfloat16, 128, False) == "xla"
  attn_mod._logged_choice.clear()
  q, k, v, _ = _inputs(1, 8, 2, 2, 8, jnp.float32)
  with caplog.at_level(logging.INFO, logger="jshear.model.attention"):
    out = attention(q, k, v, impl="auto")
    attention(q, k, v, impl="auto")
  np.testing.assert_array_equal(np.asarray(out), np.asarray(xla_attention(q, k, v)))
  msgs = [r.getMessage() for r in caplog.records if "auto chose" in r.getMessage()]
  assert msgs == ["attention_impl=auto chose 'xla' on backend 'cpu'"]


def test_explicit_impls_that_cannot_run_here_raise(monkeypatch):
  q, k, v, _ = _inputs(1, 8, 2, 2, 16, jnp.float32)
  with pytest.raises(JShearError, match="cudnn.*needs a GPU"):
    attention(q, k, v, impl="cudnn")
  with pytest.raises(JShearError, match="must be one of"):
    attention(q, k, v, impl="flash")
  monkeypatch.setenv("JSHEAR_PALLAS_INTERPRET", "0")
  with pytest.raises(JShearError, match="only runs in interpret mode"):
    attention(q, k, v, impl="pallas")
  with pytest.raises(JShearError, match="only runs in interpret mode"):
    attention(q, k, v, impl="splash")
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  with pytest.raises(JShearError, match="on TPU use 'splash'"):
    attention(q, k, v, impl="pallas")
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  with pytest.raises(JShearError, match="TPU splash kernel"):
    attention(q, k, v, impl="splash")


def test_bad_shapes_and_head_dims_raise():
  q, k, v, _ = _inputs(1, 8, 2, 2, 512, jnp.float32)
  with pytest.raises(JShearError, match="head_dim <= 256, got 512"):
    flash_attention(q, k, v)
  q, k, v, _ = _inputs(1, 8, 3, 2, 16, jnp.float32)
  with pytest.raises(JShearError, match=r"query heads \(3\) must be a multiple"):
    flash_attention(q, k, v)
  q, k, v, _ = _inputs(1, 8, 2, 2, 16, jnp.float32, S=12)
  with pytest.raises(JShearError, match="T == S"):
    flash_attention(q, k, v, jnp.zeros((1, 8), jnp.int32))
  # GPU (non-interpret) limits are checked before anything is lowered.
  from jshear.kernels.flash_attention import check_head_dim
  with pytest.raises(JShearError, match="power-of-two head_dim"):
    check_head_dim(96, interpret=False)
  check_head_dim(96, interpret=True)
