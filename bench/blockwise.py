"""Block training (blockwise local distillation) against a distillation continue step: same
pruned student, same tokens a step, timed interleaved in one run (issue 28).

  python bench/blockwise.py [--small] [--out DIR] [--batch B] [--seq T] [--rounds N]

Default: configs/demo.py's shapes, random weights (speed does not depend on the values):
SmolLM2-135M's shape as the source and teacher, the demo's prune target as the student,
the demo's continued batch (4 x 256). --small: a 4-layer toy source, 3-layer student, 2 x 32.

Contenders, each built by the function its stage uses:
  blocks   every block's step at once (jshear.train.blocks: block_step, vmapped over the
           block axis sharded on all devices, as train_blocks runs it), on recorded streams
  distill  the continue stage's step with the source as teacher
           (jshear.train.compile.stage_step, one device, teacher forward inside the step)
  record   the recording's source forward to the block boundaries (done once a row before
           block training; its memory-map writes are not timed)
Memory: XLA's compiled memory analysis of each step, per device (arguments + outputs +
temporaries - aliased): an estimate, not a measured peak. The continue step donates its
state; train_blocks' step does not, so old and new block states both count.
Work split: jshear.blockwise.device_assignment over the devices the block step ran on.
On a CPU, fake devices (--xla_force_host_platform_device_count) share the same cores, so
no parallel speed-up shows here: `ideal_speedup` is what equal slots a device would allow.
One JSON line per figure (and DIR/blockwise.jsonl with --out).
"""

import argparse
import json
import os
import time

import common
import jax
import numpy as np

from jshear import blockwise as bw
from jshear import distill
from jshear.config_base import base_config
from jshear.model.config import ModelConfig
from jshear.model.params import count_params, init_params
from jshear.prune import layerchop
from jshear.prune.targets import TargetShape, target_config
from jshear.train.blocks import (block_layout, block_states, block_step, pad_blocks,
                                 parallel_step)
from jshear.train.plan import SOURCE_SHAPES

MEMORY = "xla compiled memory_analysis, per device: arguments + outputs + temps - aliased"


def shapes(small: bool):
  """(name, source cfg, student cfg, batch, seq)."""
  if small:
    src = ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=4,
                      num_heads=4, num_kv_heads=2, head_dim=16)
    return "toy-4L-64d", src, target_config(src, TargetShape(3, 2, 1, 48, 96)), 2, 32
  from configs import demo
  c = demo.get_config()
  t = c.prune.target
  src = ModelConfig(**SOURCE_SHAPES["smollm2-135m"])
  student = target_config(src, TargetShape(t.num_layers, t.num_heads, t.num_kv_heads,
                                           t.hidden_size, t.intermediate_size))
  return "smollm2-135m->demo-target", src, student, c.continued.batch_size, c.data.seq_len


def memory(compiled) -> dict:
  m = compiled.memory_analysis()
  parts = {k: int(getattr(m, f"{k}_size_in_bytes", 0))
           for k in ("argument", "output", "temp", "alias")}
  return {"peak_bytes": parts["argument"] + parts["output"] + parts["temp"] - parts["alias"],
          **{f"{k}_bytes": v for k, v in parts.items()}}


def rows(vocab: int, batch: int, seq: int) -> dict:
  toks = common.random_tokens(vocab, batch, seq)
  return {"tokens": toks, "segment_ids": np.ones_like(toks),
          "positions": np.tile(np.arange(seq, dtype=np.int32), (batch, 1))}


def blocks_contender(scfg, sparams, hidden, data):
  """The vmapped block step on random recorded streams of the demo's shapes."""
  n, (b, t) = scfg.num_layers, data["tokens"].shape
  step, opt, groups = block_step(scfg, base_config().blockwise, 1000)
  mesh, shard, pad = block_layout(n)
  rng = np.random.default_rng(1)
  streams = rng.standard_normal((n + 1, b, t, len(hidden)), dtype=np.float32)
  batch = {"x": streams[:-1], "y": streams[1:],
           **{k: np.broadcast_to(v, (n,) + v.shape) for k, v in data.items()}}
  with jax.set_mesh(mesh):
    state = jax.device_put(pad_blocks(bw.stack_states(
        block_states(sparams["layers"], n, opt, groups, 0)), pad), shard)
    batch = jax.device_put(pad_blocks(batch, pad), shard)
    t0 = time.perf_counter()
    compiled = parallel_step(step, shard).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
  box = {"s": state}

  def run():
    box["s"], m = compiled(box["s"], batch)
    jax.block_until_ready(m["lm_loss"])
  info = {"devices": len(mesh.devices.flat), "compile_s": round(compile_s, 1), **memory(compiled)}
  return run, info


def distill_contender(tcfg, tparams, scfg, sparams, data, seq):
  """The continue stage's distillation step, wired as the stage wires it."""
  b = data["tokens"].shape[0]
  setup = distill.build_setup(base_config().distill, scfg, [("source", tcfg, tparams, True)],
                              steps=1000, seed=0)
  plan = common.jshear_stage_step(scfg, b, distiller=setup.distiller)
  mesh = plan.batch_sharding.mesh
  with jax.set_mesh(mesh):
    t0 = time.perf_counter()
    compiled = plan.lower(b, seq).compile()
    compile_s = time.perf_counter() - t0
    state = jax.jit(plan.make_state, out_shardings=plan.shardings)(jax.device_put(sparams),
                                                                   None)
    teachers, _ = distill.put_teachers(setup, mesh, np.float32)
    batch = jax.device_put(data, plan.batch_sharding)
  box = {"s": state}

  def run():
    box["s"], m = compiled(box["s"], batch, teachers)
    jax.block_until_ready(m["loss"])
  info = {"devices": len(mesh.devices.flat), "compile_s": round(compile_s, 1), **memory(compiled)}
  return run, info


def record_contender(tcfg, tparams, kept, hidden, data):
  """The source forward `jshear.blockwise.record` runs for each chunk of rows."""
  sources = bw.boundary_sources(bw.spans(tcfg.num_layers, kept))
  keep = jax.numpy.asarray(hidden)
  fn = jax.jit(lambda p, r: bw._boundaries(tcfg, p, r, sources, keep, None))
  params, batch = jax.device_put(tparams), jax.device_put(data)
  t0 = time.perf_counter()
  compiled = fn.lower(params, batch).compile()
  compile_s = time.perf_counter() - t0

  def run():
    np.asarray(compiled(params, batch))   # record() copies every chunk to the host
  return run, {"compile_s": round(compile_s, 1), **memory(compiled)}


def split(n_blocks: int, n_devices: int) -> dict:
  assign = bw.device_assignment(n_blocks, n_devices)
  slots = len(assign[0])
  return {"blocks_per_device": [len(a) for a in assign], "slots_per_device": slots,
          "padded_slots": slots * n_devices - n_blocks, "ideal_speedup": n_blocks / slots}


def run(small: bool, batch: int = 0, seq: int = 0, rounds: int = 0, emit=common.emit):
  """Build, compile and time the three contenders; emit(**figure) once a figure."""
  name, tcfg, scfg, b, t = shapes(small)
  batch, seq = batch or b, seq or t
  rounds = rounds or (2 if small else 5)
  head = {"bench": "blockwise", "model": name, "batch": [batch, seq]}
  tparams = jax.device_get(jax.jit(init_params, static_argnums=0)(tcfg, jax.random.key(0)))
  sparams = jax.device_get(jax.jit(init_params, static_argnums=0)(scfg, jax.random.key(1)))
  kept = np.nonzero(layerchop.layer_mask(tcfg.num_layers, scfg.num_layers, "max_gap"))[0]
  hidden = np.arange(scfg.hidden_size)   # which channels does not change the cost
  data = rows(tcfg.vocab_size, batch, seq)
  runs, info = {}, {}
  runs["blocks"], info["blocks"] = blocks_contender(scfg, sparams, hidden, data)
  runs["distill"], info["distill"] = distill_contender(tcfg, tparams, scfg, sparams, data, seq)
  runs["record"], info["record"] = record_contender(tcfg, tparams, kept, hidden, data)
  secs = common.interleaved(runs, rounds=rounds)
  n_tok = batch * seq
  cond = dict(dtype="float32", rounds=rounds, device=jax.devices()[0].device_kind,
              backend=jax.default_backend())
  emit(**head, figure="sizes", source_layers=tcfg.num_layers, student_layers=scfg.num_layers,
       source_params=count_params(tparams), student_params=count_params(sparams),
       student_hidden=scfg.hidden_size)
  for k, what in (("blocks", "all blocks' vmapped step, recorded streams"),
                  ("distill", "continue step: teacher forward + student train step"),
                  ("record", "source forward to the block boundaries, once a row")):
    emit(**head, figure=f"{k}_step", what=what, step_s=secs[k], tokens_per_s=n_tok / secs[k],
         memory=MEMORY, **info[k], **cond)
  blk, dst = info["blocks"], info["distill"]
  emit(**head, figure="ratios", blocks_over_distill_tokens_per_s=secs["distill"] / secs["blocks"],
       blocks_over_distill_peak_bytes=blk["peak_bytes"] / dst["peak_bytes"],
       record_over_distill_tokens_per_s=secs["distill"] / secs["record"],
       blocks_devices=blk["devices"], distill_devices=dst["devices"])
  n, d = scfg.num_layers, blk["devices"]
  emit(**head, figure="work_split", blocks=n, devices=d, assignment=bw.device_assignment(n, d),
       **split(n, d), by_device_count={k: split(n, k) for k in (1, 2, 4, 8)},
       recording_bytes_per_token=(n + 1) * len(hidden) * 4,
       note="fake CPU devices share the host's cores: no parallel speed-up is measured on CPU"
       if jax.default_backend() == "cpu" else "")


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--small", action="store_true", help="toy sizes (seconds)")
  p.add_argument("--out", default="", help="also write DIR/blockwise.jsonl")
  p.add_argument("--batch", type=int, default=0, help="rows a step (default: the demo's)")
  p.add_argument("--seq", type=int, default=0, help="tokens a row (default: the demo's)")
  p.add_argument("--rounds", type=int, default=0, help="timed rounds (default 5, --small 2)")
  a = p.parse_args()
  for k in ("batch", "seq", "rounds"):
    if getattr(a, k) < 0:
      p.error(f"--{k} must be positive, got {getattr(a, k)}")
  emit = common.emit
  if a.out:
    path = os.path.join(a.out, "blockwise.jsonl")
    try:
      os.makedirs(a.out, exist_ok=True)
      open(path, "w").close()   # this run's figures only
    except OSError as exc:
      p.error(f"--out {a.out}: {exc.strerror}")

    def emit(**kw):
      common.emit(**kw)
      with open(path, "a") as f:
        f.write(json.dumps(kw) + "\n")
  run(a.small, a.batch, a.seq, a.rounds, emit)


if __name__ == "__main__":
  main()
