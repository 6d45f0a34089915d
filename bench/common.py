"""Shared bench helpers: one JSON line per figure, interleaved timing of the contenders so a
noisy shared machine slows both sides alike."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from jshear import hostmem  # noqa: E402

# Every contender, here or in a worker process spawned from here, gets the same allocator setting.
hostmem.reexec_with_huge_pages()


def emit(**kw):
  print(json.dumps(kw), flush=True)


def interleaved(fns: dict, rounds: int = 5, warmup: int = 1) -> dict:
  """{name: fn} -> {name: median seconds}; contenders alternate within every round."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times = {k: [] for k in fns}
  for _ in range(rounds):
    for k, fn in fns.items():
      t = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t)
  return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def _serve(conn, factory, kwargs):
  """Worker side of `interleaved_procs`: build once, then time one call per request."""
  fn, info = factory(**kwargs)
  conn.send(info)
  while conn.recv() == "run":
    t = time.perf_counter()
    fn()
    conn.send(time.perf_counter() - t)


def interleaved_procs(contenders: dict, rounds: int = 5, warmup: int = 1, block: int = 1):
  """Like `interleaved`, but each contender lives in its own process, as it would for a user:
  {name: (factory, kwargs)}, factory(**kwargs) -> (fn, info dict) runs in the worker, once.
  Returns ({name: median seconds}, {name: info}, {name: median of the first calls of turns}).

  With block > 1 each turn runs `block` calls in a row and times all but the first: the steady
  state of a training run. Here a jshear step that directly follows a torch step (in the same
  process or not) spent ~1.3 s more in the kernel than the next one, faulting in huge pages
  that the other workload had just fragmented."""
  import multiprocessing as mp
  ctx = mp.get_context("spawn")
  workers, infos = {}, {}
  try:
    for name, (factory, kwargs) in contenders.items():  # one at a time: set-up is not timed
      here, there = ctx.Pipe()
      proc = ctx.Process(target=_serve, args=(there, factory, kwargs), daemon=True)
      proc.start()
      workers[name] = (proc, here)
      infos[name] = here.recv()
    times, switched = {k: [] for k in contenders}, {k: [] for k in contenders}
    for i in range(warmup + rounds):
      for name, (_, conn) in workers.items():
        for j in range(block):
          conn.send("run")
          dt = conn.recv()
          if i >= warmup:
            (times if j > 0 or block == 1 else switched)[name].append(dt)
  finally:
    for proc, conn in workers.values():
      try:
        conn.send("stop")
      except OSError:
        pass
      proc.join(timeout=30)
      if proc.is_alive():
        proc.kill()
  med = lambda d: {k: sorted(v)[len(v) // 2] for k, v in d.items() if v}
  return med(times), infos, med(switched)


def matmul_peak_flops(n: int = 1024, reps: int = 10) -> float:
  """fp32 matmul FLOP/s jax reaches on this machine right now (the MFU denominator)."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def random_tokens(vocab_size: int, batch_size: int, seq: int):
  """The benches' fixed batch: int32 [batch_size, seq], seed 0."""
  import numpy as np
  return np.random.default_rng(0).integers(0, vocab_size, (batch_size, seq)).astype(np.int32)


def jshear_stage_step(cfg, batch_size: int, prune_groups=None, target=None,
                      compute_dtype=None, distiller=None, lora=None):
  """The stage step the loop would compile (jshear.train.compile.stage_step), on a
  one-device mesh: prune (learned masks over `prune_groups` toward `target`) or continue
  (plain, distilling with `distiller`, or with LoRA: `lora` = continued.lora settings,
  e.g. {"rank": 16}). Returns the StageStep."""
  import jax
  import jax.numpy as jnp

  from jshear import sharding as shd
  from jshear.config_base import base_config
  from jshear.train import stages
  from jshear.train.compile import stage_step
  from jshear.train.context import Context, PruneSpec

  run = base_config()
  run.model.compute_dtype = "float32" if compute_dtype is None else jnp.dtype(compute_dtype).name
  name = "prune" if prune_groups is not None else "continue"
  block = run[stages.get(name).block]
  block.steps, block.warmup_steps, block.batch_size, block.grad_accum = 1000, 10, batch_size, 1
  block.lora.update(lora or {})
  mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  ctx = Context(cfg=run, workdir="", mesh=mesh, writer=None, data_dir="")
  spec = (PruneSpec(target, tuple(prune_groups), "layer_mean", 100)
          if prune_groups is not None else None)
  return stage_step(ctx, stages.get(name), cfg, spec, distiller=distiller)


def jshear_train_step(cfg, params, batch_size: int, seq: int, prune_groups=None, target=None,
                      compute_dtype=None):
  """The jitted jshear train step on one device and its inputs: (step, state, batch).
  compute_dtype: e.g. bfloat16 for mixed precision (None: the params' dtype)."""
  import jax
  import numpy as np

  plan = jshear_stage_step(cfg, batch_size, prune_groups, target, compute_dtype)
  state = jax.jit(plan.make_state, out_shardings=plan.shardings)(jax.device_put(params),
                                                                 plan.prune_state)
  toks = random_tokens(cfg.vocab_size, batch_size, seq)
  batch = {"tokens": toks, "segment_ids": np.ones_like(toks),
           "positions": np.tile(np.arange(seq, dtype=np.int32), (batch_size, 1))}
  return plan.step, state, batch
