"""Attention throughput, forward + backward, one JSON line per figure.

  python bench/attention.py            # GPU: pallas vs cudnn vs xla, bf16, head_dim 128,
                                       #      causal, seq 2048/4096/8192 (16k tokens a step)
  python bench/attention.py --cpu      # CPU: XLA forms only (jshear's grouped-layout reference
                                       #      vs jax.nn.dot_product_attention vs a per-head
                                       #      einsum softmax), fp32, small sizes
  python bench/attention.py --small    # what `make bench` runs: --cpu off GPU, else GPU
                                       #      figures at seq 2048 only

TFLOP/s counts matmul FLOPs only: forward 4*B*N*T*S*Dh (halved when causal), backward 2.5x
the forward (FlashAttention-2's convention: 5 matmuls against 2), so fwd+bwd = 3.5x forward.
Each figure is the median of `--iters` timed steps after 2 warm-up steps (compile excluded);
the contenders' steps are interleaved so a noisy shared machine slows them alike.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jshear.model.attention import attention, attention_flops  # noqa: E402


def _emit(**kw):
  print(json.dumps(kw), flush=True)


def einsum_attention(q, k, v, *, causal=True, segment_ids=None):
  """Plain XLA attention: einsum scores, fp32 softmax, einsum values (GQA by reshape)."""
  B, T, N, D = q.shape
  S, KV = k.shape[1], k.shape[2]
  qg = q.reshape(B, T, KV, N // KV, D)
  s = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) / (D ** 0.5)
  if causal:
    s = jnp.where(jnp.tril(jnp.ones((T, S), bool)), s, -1e30)
  p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
  return jnp.einsum("bkgts,bskd->btkgd", p, v).reshape(B, T, N, D)


def _step(fn):
  def loss(q, k, v, ct):
    return jnp.sum((fn(q, k, v) * ct).astype(jnp.float32))
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _args(B, T, N, KV, D, dtype):
  ks = jax.random.split(jax.random.key(0), 4)
  return (jax.random.normal(ks[0], (B, T, N, D), dtype),
          jax.random.normal(ks[1], (B, T, KV, D), dtype),
          jax.random.normal(ks[2], (B, T, KV, D), dtype),
          jax.random.normal(ks[3], (B, T, N, D), dtype))


def run(impls, seqs, tokens, N, KV, D, dtype, iters, device, emit=_emit):
  """Per sequence length: compile and warm up every impl, then time them interleaved (one
  step of each per round) so a noisy shared machine slows all contenders alike. `emit`
  (default: print a JSON line) receives each figure as keyword arguments."""
  for T in seqs:
    B = max(1, tokens // T)
    flops = 3.5 * attention_flops(B, T, T, N, D, causal=True)
    args = _args(B, T, N, KV, D, dtype)
    fig = dict(device=device, dtype=jnp.dtype(dtype).name, batch=B, seq=T,
               heads=N, kv_heads=KV, head_dim=D, causal=True, **{"pass": "fwd+bwd"})
    steps = {}
    for name, fn in impls.items():
      try:
        step = _step(fn)
        for _ in range(2):
          jax.block_until_ready(step(*args))
        steps[name] = step
      except Exception as e:  # report and go on: one impl failing must not hide the rest
        err = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        emit(bench="attention", impl=name, **fig, error=err)
    times = {name: [] for name in steps}
    for _ in range(iters):
      for name, step in steps.items():
        t0 = time.perf_counter()
        jax.block_until_ready(step(*args))
        times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
      sec = statistics.median(ts)
      emit(bench="attention", impl=name, **fig, ms=round(sec * 1e3, 3),
           tflops=round(flops / sec / 1e12, 4))


def jshear_impls(names):
  """{name: causal attention through jshear's entry point with impl=name}."""
  return {name: (lambda q, k, v, name=name: attention(q, k, v, causal=True, impl=name))
          for name in names}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--cpu", action="store_true", help="XLA forms only, small sizes")
  ap.add_argument("--small", action="store_true", help="quick run (make bench)")
  ap.add_argument("--iters", type=int, default=0)
  args = ap.parse_args()
  backend = jax.default_backend()
  device = jax.devices()[0].device_kind
  if args.cpu or backend != "gpu":
    impls = {
        "jshear_xla": lambda q, k, v: attention(q, k, v, causal=True, impl="xla"),
        "jax_dot_product_attention": lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation="xla"),
        "xla_einsum_softmax": lambda q, k, v: einsum_attention(q, k, v, causal=True),
    }
    seqs = (256, 512) if args.small else (256, 512, 1024)
    run(impls, seqs, tokens=1024, N=9, KV=3, D=64, dtype=jnp.float32,
        iters=args.iters or 5, device=device)
    return
  impls = jshear_impls(("pallas", "cudnn", "xla"))
  seqs = (2048,) if args.small else (2048, 4096, 8192)
  run(impls, seqs, tokens=16384, N=16, KV=16, D=128, dtype=jnp.bfloat16,
      iters=args.iters or 10, device=device)


if __name__ == "__main__":
  main()
