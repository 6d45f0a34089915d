"""One prepared accelerator check (issue 16): kernels, step MFU and the memory planner on a
real GPU, in one call of under 8 minutes on one H200.

  python bench/accelerator.py --out DIR            # GPU: the real check
  python bench/accelerator.py --out DIR --smoke    # CPU: every part at toy sizes (a test)

Writes DIR/accelerator.jsonl (one JSON record per figure; every record has `part` and
`status` in ok / fail / error / skipped, `fail` meaning a result outside its tolerance) and
DIR/summary.md. Parts run in order and a failing part is recorded, traceback included,
without stopping the rest:
  1 environment   versions, devices, a bf16 matmul peak measured now (the MFU denominator)
  2 kernels       Pallas flash attention fwd+bwd compiled for real vs the XLA reference (the
                  cases of tests/test_kernels.py plus default-tile cases), cuDNN vs XLA
  3 attention     bench/attention.py: pallas vs cudnn vs xla, bf16, head_dim 128, 2k/4k/8k
  4 train_step    MFU of the continued-pretraining and pruning steps of a 1.3B LLaMA shape
                  (Sheared-LLaMA-1.3B's) and of the SmolLM2-135M step, random weights, bf16
                  compute; each step in its own process, so its peak memory is its own
  5 planner       jshear.train.plan's estimate (CPU, ahead of time, as users run it) vs the
                  measured peak device memory of the same steps
  6 blockwise     bench/blockwise.py: block training vs a distillation continue step, tokens/s
                  and compiled memory of each, the per-device work split (demo shapes)
Targets are printed next to the figures, not asserted.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

# Steps run in worker processes on the same GPU: nobody may grab 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import common  # noqa: E402  (sets sys.path and the allocator first)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PARTS = ("environment", "kernels", "attention", "train_step", "planner", "blockwise")
TARGETS = {"pallas_vs_cudnn_max": 1.3, "pallas_vs_xla_min": 3.0, "mfu_min": 0.45,
           "planner_rel_err_max": 0.2}
GIB = 1024 ** 3


# --------------------------------------------------------------------------------------------
# sizes: the real check and the CPU smoke run differ only here

def sizes(smoke: bool) -> dict:
  if smoke:
    return dict(peak_n=256, attn=dict(seqs=(128,), tokens=128, N=4, KV=2, D=32, iters=1),
                step_warmup=1, step_iters=1, worker_timeout=240, kernel_budget_s=60, budget_s=300,
                blockwise_rounds=1)
  # budget_s: the whole run, under the 8 minutes one device call is planned for.
  return dict(peak_n=8192, attn=dict(seqs=(2048, 4096, 8192), tokens=16384, N=16, KV=16, D=128,
                                     iters=10),
              step_warmup=2, step_iters=5, worker_timeout=240, kernel_budget_s=120, budget_s=460,
              blockwise_rounds=3)


def step_specs(smoke: bool) -> dict:
  """name -> (model config, batch, seq, prune groups, prune target). Random weights only."""
  from jshear.model.config import ModelConfig
  from jshear.train.plan import SOURCE_SHAPES
  from jshear.prune.targets import TargetShape
  groups = ("layer", "head", "intermediate", "hidden")
  if smoke:
    toy = ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                      num_heads=4, num_kv_heads=4, head_dim=16)
    smol = ModelConfig(**SOURCE_SHAPES["smollm2-135m"]).replace(num_layers=2)
    return {"llama1b_continue": (toy, 2, 64, None, None),
            "llama1b_prune": (toy, 2, 64, groups, TargetShape(1, 2, 2, 32, 64)),
            "smollm2_continue": (smol, 1, 32, None, None)}
  # Sheared-LLaMA-1.3B's shape (configs/sheared_1p3b.py's target), LLaMA2 vocabulary. 4 x 4096
  # tokens: the planner puts 8 x 4096 at 112 GiB with XLA attention (the fallback), too close
  # to the H200's 141 GB beside what the main process still holds.
  b13 = ModelConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5504, num_layers=24,
                    num_heads=16, num_kv_heads=16, head_dim=128)
  smol = ModelConfig(**SOURCE_SHAPES["smollm2-135m"])
  return {"llama1b_continue": (b13, 4, 4096, None, None),
          "llama1b_prune": (b13, 4, 4096, groups, TargetShape(16, 12, 12, 1536, 4096)),
          "smollm2_continue": (smol, 16, 2048, None, None)}


# --------------------------------------------------------------------------------------------
# recording

class Recorder:
  """Appends records to DIR/accelerator.jsonl and echoes them as JSON lines."""

  def __init__(self, out_dir: str):
    os.makedirs(out_dir, exist_ok=True)
    self.path = os.path.join(out_dir, "accelerator.jsonl")
    self.records = []
    open(self.path, "w").close()

  def add(self, part: str, status: str = "ok", **kw) -> dict:
    rec = {"part": part, "status": status, **kw}
    self.records.append(rec)
    line = json.dumps(rec, default=str)
    with open(self.path, "a") as f:
      f.write(line + "\n")
    print(line, flush=True)
    return rec


def _error_fields(exc: BaseException) -> dict:
  return {"error": f"{type(exc).__name__}: {str(exc)[:2000]}",
          "traceback": traceback.format_exc()[-6000:]}


def run_part(rec: Recorder, name: str, fn, *args):
  """Run one part; its failure is a record, never the end of the run."""
  t0 = time.perf_counter()
  try:
    fn(rec, *args)
    status, extra = "ok", {}
  except Exception as exc:  # noqa: BLE001  (every failure is reported, the rest still runs)
    status, extra = "error", _error_fields(exc)
  rec.add(name, status, record="part", seconds=round(time.perf_counter() - t0, 1), **extra)


# --------------------------------------------------------------------------------------------
# 1 environment

def bf16_matmul_peak(n: int, reps: int = 10, tries: int = 3) -> float:
  """Best bf16 matmul FLOP/s over `tries` batches of `reps` queued calls (dispatch hidden)."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(tries):
    t = time.perf_counter()
    outs = [f(a, b) for _ in range(reps)]
    jax.block_until_ready(outs)
    best = min(best, (time.perf_counter() - t) / reps)
  return 2 * n ** 3 / best


def _versions() -> dict:
  from importlib import metadata
  out = {}
  for pkg in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
              "orbax-checkpoint", "grain", "ml-collections", "transformers", "numpy"):
    try:
      out[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      pass
  return out


def _nvidia_smi() -> str | None:
  try:
    return subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
         "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None


def part_environment(rec: Recorder, sz: dict, state: dict):
  import jax
  dev = jax.devices()[0]
  stats = dev.memory_stats() or {}
  rec.add("environment", versions=_versions(), python=sys.version.split()[0],
          backend=jax.default_backend(), devices=[str(d) for d in jax.devices()],
          device_kind=dev.device_kind,
          platform_version=getattr(getattr(dev, "client", None), "platform_version", None),
          bytes_limit=stats.get("bytes_limit"), nvidia_smi=_nvidia_smi())
  peak = bf16_matmul_peak(sz["peak_n"])
  state["peak_flops"] = peak
  rec.add("environment", figure="bf16_matmul_peak", n=sz["peak_n"], tflops=round(peak / 1e12, 2))


# --------------------------------------------------------------------------------------------
# 2 kernel correctness

def _test_kernels():
  """tests/test_kernels.py: its case grid and input builders are the cases checked here."""
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  import test_kernels
  return test_kernels


def kernel_cases(smoke: bool):
  """(B, T, N, KV, D, causal, packed, blocks, dtype) tuples: the tests' grid, plus default
  tiles at training lengths on a GPU (the tests' tiles are tiny, for interpret mode)."""
  import jax.numpy as jnp
  grid = _test_kernels().GRID
  if smoke:
    return [grid[1], grid[-2]]  # GQA + packed + padded + causal, fp32 and bf16
  big = [(2, 1024, 16, 4, 128, True, True, None, jnp.bfloat16),
         (2, 1024, 16, 16, 128, False, False, None, jnp.bfloat16),
         (1, 2048, 16, 16, 128, True, False, None, jnp.bfloat16),
         (1, 1000, 8, 2, 64, True, True, None, jnp.float32),
         (1, 1024, 8, 8, 128, False, True, None, jnp.float32)]
  return list(grid) + big


def _fwd_bwd(fn, q, k, v, ct, options):
  import jax
  import numpy as np

  def both(q, k, v, ct):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out, *vjp(ct))
  return [np.asarray(x, np.float32)
          for x in jax.jit(both, compiler_options=options)(q, k, v, ct)]


def _max_errors(got, want) -> dict:
  import numpy as np
  return {name: {"abs": float(np.max(np.abs(g - w))), "scale": float(np.max(np.abs(w)))}
          for name, g, w in zip(("out", "dq", "dk", "dv"), got, want)}


def _within(errs: dict, tol: float, relative: bool) -> bool:
  return all(e["abs"] <= tol * (max(1.0, e["scale"]) if relative else 1.0)
             for e in errs.values())


def _tolerance(dtype, on_gpu: bool):
  """The tests' bounds (fp32 2e-5 absolute, bf16 2e-2 relative); on a GPU fp32 dots inside
  Triton and XLA may run as TF32 (10-bit mantissa), so fp32 gets 2e-3 relative there."""
  import jax.numpy as jnp
  if dtype == jnp.float32:
    return (2e-3, True) if on_gpu else (2e-5, False)
  return 2e-2, True


def _case_fields(case) -> dict:
  import jax.numpy as jnp
  B, T, N, KV, D, causal, packed, blocks, dtype = case
  return dict(B=B, T=T, N=N, KV=KV, D=D, causal=causal, packed=packed,
              blocks=None if blocks is None else list(blocks.tiles()),
              dtype=jnp.dtype(dtype).name)


def check_kernel_case(rec, impl, case, options, on_gpu):
  """One case: `impl` (pallas or cudnn) fwd + dq/dk/dv vs the XLA reference."""
  import jax
  import jax.numpy as jnp

  from jshear.model.attention import attention, xla_attention
  tk = _test_kernels()
  B, T, N, KV, D, causal, packed, blocks, dtype = case
  if impl == "cudnn" and dtype == jnp.float32:
    dtype = jnp.bfloat16  # cuDNN flash attention is half precision only
  q, k, v, ct = tk._inputs(B, T, N, KV, D, dtype)
  seg = tk._segments(B, T) if packed else None
  kw = dict(block_sizes=blocks) if impl == "pallas" else {}
  t0 = time.perf_counter()
  got = _fwd_bwd(lambda q, k, v: attention(q, k, v, causal=causal, segment_ids=seg, impl=impl,
                                           **kw), q, k, v, ct, options)
  with jax.default_matmul_precision("highest"):
    want = _fwd_bwd(lambda q, k, v: xla_attention(q, k, v, causal=causal, segment_ids=seg),
                    q, k, v, ct, options)
  errs = _max_errors(got, want)
  tol, relative = _tolerance(dtype, on_gpu)
  fields = {**_case_fields(case), "dtype": jnp.dtype(dtype).name}
  rec.add("kernels", "ok" if _within(errs, tol, relative) else "fail", impl=impl, **fields,
          max_err=errs, tol=tol, tol_relative=relative, seconds=round(time.perf_counter() - t0, 1))


def part_kernels(rec: Recorder, sz: dict, state: dict):
  import jax

  from jshear.kernels import interpret_default
  on_gpu = jax.default_backend() == "gpu"
  if on_gpu:
    os.environ["JSHEAR_PALLAS_INTERPRET"] = "0"  # compiled through Triton, never interpreted
  # CPU: interpret-mode kernels are XLA loops; skip the optimisation passes (as the tests do).
  options = None if on_gpu else {"xla_backend_optimization_level": 0}
  rec.add("kernels", figure="mode", pallas_interpret=interpret_default(),
          backend=jax.default_backend())
  deadline = time.perf_counter() + sz["kernel_budget_s"]
  impls = ("pallas", "cudnn") if on_gpu else ("pallas",)
  if not on_gpu:
    rec.add("kernels", "skipped", impl="cudnn", reason="skipped: no GPU")
  for case in kernel_cases(state["smoke"]):
    for impl in impls:  # per case, so a spent budget leaves both impls with some cases
      if time.perf_counter() > deadline:
        rec.add("kernels", "skipped", impl=impl, **_case_fields(case), reason="time budget")
        continue
      try:
        check_kernel_case(rec, impl, case, options, on_gpu)
      except Exception as exc:  # noqa: BLE001  (one case failing must not hide the others)
        rec.add("kernels", "error", impl=impl, **_case_fields(case), **_error_fields(exc))


# --------------------------------------------------------------------------------------------
# 3 attention throughput (bench/attention.py)

def part_attention(rec: Recorder, sz: dict, state: dict):
  import jax
  import jax.numpy as jnp

  import attention as attn_bench
  on_gpu = jax.default_backend() == "gpu"
  names = ("pallas", "cudnn", "xla") if on_gpu else ("pallas", "xla")
  if not on_gpu:
    rec.add("attention", "skipped", impl="cudnn", reason="skipped: no GPU")
  figs = []

  def emit(**kw):
    figs.append(kw)
    rec.add("attention", "error" if "error" in kw else "ok", **kw)
  a = sz["attn"]
  attn_bench.run(attn_bench.jshear_impls(names), a["seqs"], tokens=a["tokens"], N=a["N"],
                 KV=a["KV"], D=a["D"], dtype=jnp.bfloat16, iters=a["iters"],
                 device=jax.devices()[0].device_kind, emit=emit)
  attention_targets(rec, figs, max(a["seqs"]))


def attention_targets(rec, figs, seq):
  ms = {f["impl"]: f["ms"] for f in figs if f["seq"] == seq and "ms" in f}
  out = {"seq": seq, "pallas_ms": ms.get("pallas")}
  if "pallas" in ms and "cudnn" in ms:
    out["pallas_over_cudnn_time"] = ms["pallas"] / ms["cudnn"]
    out["within_1.3x_cudnn"] = out["pallas_over_cudnn_time"] <= TARGETS["pallas_vs_cudnn_max"]
  if "pallas" in ms and "xla" in ms:
    out["speedup_over_xla"] = ms["xla"] / ms["pallas"]
    out["at_least_3x_xla"] = out["speedup_over_xla"] >= TARGETS["pallas_vs_xla_min"]
  rec.add("attention", figure="targets", **out)


# --------------------------------------------------------------------------------------------
# 4 train steps (each in its own worker process) and 5 the planner (a CPU worker process)

def _worker_cmd(kind: str, names, smoke: bool):
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--names", ",".join(names)]
  return cmd + (["--smoke"] if smoke else [])


def _planner_env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if "xla_force_host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join(flags + ["--xla_force_host_platform_device_count=1"])
  return env


def _results(out: str) -> list:
  return [json.loads(line[len("RESULT "):]) for line in out.splitlines()
          if line.startswith("RESULT ")]


def _left(state) -> float:
  return state["deadline"] - time.perf_counter()


def run_workers(kind, groups, state, timeout, env=None):
  """Run one worker process per group of step names; -> {name: result dict}. Groups that
  cannot start with a minute of the run's time budget left are skipped."""
  res, smoke = {}, state["smoke"]
  for names in groups:
    if _left(state) < 60:
      res.update({n: {"name": n, "skipped": "time budget"} for n in names})
      continue
    timeout = min(timeout, _left(state) - 20)
    try:
      p = subprocess.run(_worker_cmd(kind, names, smoke), capture_output=True, text=True,
                         timeout=timeout, env=env)
      got = {r["name"]: r for r in _results(p.stdout)}
      tail = (p.stderr or "")[-4000:]
    except subprocess.TimeoutExpired as exc:
      got, tail = {}, f"worker timed out after {timeout:.0f} s\n{str(exc.stderr or '')[-3000:]}"
    for n in names:
      res[n] = got.get(n) or {"name": n, "error": "worker produced no result", "traceback": tail}
  return res


def part_train_step(rec: Recorder, sz: dict, state: dict):
  smoke = state["smoke"]
  names = list(step_specs(smoke))
  start_planner(state)  # it compiles on CPU meanwhile (no GPU needed); part 5 collects it
  groups = [names] if smoke else [[n] for n in names]  # on a GPU: one process per step
  res = run_workers("step", groups, state, sz["worker_timeout"])
  peak = state.get("peak_flops")
  state["steps"] = res
  for n in names:
    r = dict(res[n])
    for attempt in r.pop("failed_attempts", []):
      rec.add("train_step", "error", name=n, **attempt)
    if "error" in r or "skipped" in r:
      rec.add("train_step", "error" if "error" in r else "skipped", **r)
      continue
    mfu = r["model_flops_per_s"] / peak if peak else None
    extra = {}
    if n == "llama1b_continue" and mfu is not None:
      extra["mfu_at_least_45pct"] = mfu >= TARGETS["mfu_min"]
    rec.add("train_step", **r, mfu=mfu, **extra)


def start_planner(state):
  if "planner_proc" not in state:
    state["planner_proc"] = subprocess.Popen(
        _worker_cmd("plan", ["llama1b_continue", "llama1b_prune"], state["smoke"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_planner_env())


def part_planner(rec: Recorder, sz: dict, state: dict):
  start_planner(state)  # already running unless part train_step was left out
  proc = state.pop("planner_proc")
  try:
    out, err = proc.communicate(timeout=max(10, _left(state)))
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    err = f"planner worker timed out\n{err}"
  plans = {r["name"]: r for r in _results(out)}
  if not plans:
    raise RuntimeError(f"planner worker produced no result:\n{err[-4000:]}")
  for name, plan in plans.items():
    if "error" in plan:
      rec.add("planner", "error", **plan)
      continue
    rec.add("planner", **planner_vs_measured(name, plan, state.get("steps", {}).get(name, {})))


def planner_vs_measured(name, plan, step) -> dict:
  est = plan["per_device_gib"]["total"] * GIB
  out = {"name": name, "planner_gib": plan["per_device_gib"], "planner_attention": "xla",
         "step_attention": step.get("attention_impl"), "batch": plan["batch"]}
  peak = step.get("peak_bytes_in_use")
  if step.get("xla_estimate_bytes"):
    out["xla_compiled_estimate_gib"] = step["xla_estimate_bytes"] / GIB
  if not peak:
    out["measured"] = "no peak_bytes_in_use on this backend" if step else "step did not run"
    return out
  out.update(measured_peak_gib=peak / GIB, planner_over_measured=est / peak,
             within_20pct=abs(est / peak - 1) <= TARGETS["planner_rel_err_max"])
  return out


# --------------------------------------------------------------------------------------------
# 6 blockwise (bench/blockwise.py, in this process: its memory figures are compile-time)

def part_blockwise(rec: Recorder, sz: dict, state: dict):
  if _left(state) < 60:
    rec.add("blockwise", "skipped", reason="time budget")
    return
  import blockwise as blockwise_bench
  blockwise_bench.run(small=state["smoke"], rounds=sz["blockwise_rounds"],
                      emit=lambda **kw: rec.add("blockwise", **kw))


# --------------------------------------------------------------------------------------------
# workers

def _memory_estimate(compiled):
  """XLA's own per-device estimate for the compiled step (arguments + outputs + temps -
  aliased), or None where the backend gives none."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes -
               m.alias_size_in_bytes)
  except Exception:  # noqa: BLE001  (an estimate is optional)
    return None


def _time_step(compiled, state, batch, warmup, iters):
  import jax
  for _ in range(warmup):
    state, m = compiled(state, batch)
    jax.block_until_ready(m["loss"])
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    state, m = compiled(state, batch)
    jax.block_until_ready(m["loss"])
    times.append(time.perf_counter() - t)
  return sorted(times)[len(times) // 2], float(m["loss"])


def measure_step(name, spec, impl, sz) -> dict:
  """Build the bench's jshear step (random weights, bf16 compute), compile, time it."""
  import jax
  import jax.numpy as jnp

  from jshear.metrics import attention_flops_per_token, model_flops_per_token
  from jshear.model.attention import choose_impl
  from jshear.model.params import init_params
  cfg, B, T, groups, target = spec
  cfg = cfg.replace(attention_impl=impl)
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
  step, state, batch = common.jshear_train_step(cfg, params, B, T, groups, target,
                                                compute_dtype=jnp.bfloat16)
  del params
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  sec, loss = _time_step(compiled, state, batch, sz["step_warmup"], sz["step_iters"])
  fpt = model_flops_per_token(cfg) + attention_flops_per_token(cfg, T)
  resolved = impl if impl != "auto" else choose_impl(jax.default_backend(), jnp.bfloat16,
                                                     cfg.head_dim, True)
  stats = jax.devices()[0].memory_stats() or {}
  return dict(name=name, params=int(cfg.num_params()), layers=cfg.num_layers,
              hidden=cfg.hidden_size, batch=[B, T], compute_dtype="bfloat16", remat=cfg.remat,
              prune_groups=list(groups) if groups else None, attention_impl=resolved,
              compile_s=round(compile_s, 1), step_s=sec, tokens_per_s=B * T / sec,
              model_flops_per_s=B * T * fpt / sec, loss=loss,
              peak_bytes_in_use=stats.get("peak_bytes_in_use"),
              xla_estimate_bytes=_memory_estimate(compiled))


def worker_step(names, smoke):
  """Each step with attention 'auto' (pallas on a GPU: the batch has segment ids); if that
  fails, the failure is kept and the step is measured again with 'xla'."""
  import jax
  specs, sz = step_specs(smoke), sizes(smoke)
  impls = ("auto", "xla") if jax.default_backend() == "gpu" else ("auto",)
  for name in names:
    failed = []
    for impl in impls:
      try:
        res = measure_step(name, specs[name], impl, sz)
        break
      except Exception as exc:  # noqa: BLE001
        failed.append({"attention_impl": impl, **_error_fields(exc)})
        res = {"name": name, **failed[-1]}
    res["failed_attempts"] = failed if "error" not in res else failed[:-1]
    print("RESULT " + json.dumps(res, default=str), flush=True)


def worker_plan(names, smoke):
  """jshear.train.plan's estimate of the same steps, on one fake CPU device."""
  from jshear.train import plan as planner
  from jshear import sharding as shd
  from jshear.config_base import base_config
  specs = step_specs(smoke)
  for name in names:
    cfg_m, B, T, groups, target = specs[name]
    try:
      cfg = base_config()
      cfg.model.compute_dtype = "bfloat16"
      cfg.data.seq_len = T
      cfg.prune.batch_size = cfg.continued.batch_size = B
      stage = "prune" if groups else "continue"
      if groups:
        cfg.prune.groups = ",".join(groups)
        cfg.prune.target.update(num_layers=target.num_layers, num_heads=target.num_heads,
                                num_kv_heads=target.num_kv_heads,
                                hidden_size=target.hidden_size,
                                intermediate_size=target.intermediate_size)
      mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1})
      res = {"name": name, **planner.plan(cfg, stage, cfg_m.replace(attention_impl="xla"),
                                          mesh, 141.0)}
    except Exception as exc:  # noqa: BLE001
      res = {"name": name, **_error_fields(exc)}
    print("RESULT " + json.dumps(res, default=str), flush=True)


# --------------------------------------------------------------------------------------------
# summary

def _row(r) -> str:
  skip = {"part", "status", "traceback", "record"}
  text = json.dumps({k: v for k, v in r.items() if k not in skip}, default=str)
  return f"| {r['status']} | `{text[:600]}` |"


def write_summary(out_dir: str, recs: list, smoke: bool, seconds: float):
  lines = [f"# jshear accelerator check{' (smoke, CPU)' if smoke else ''}", "",
           f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {seconds:.0f} s. Targets (not asserted): "
           f"Pallas fwd+bwd within 1.3x of cuDNN and >= 3x XLA at the longest sequence; "
           f"1B continued-step MFU >= 45%; planner within 20% of the measured peak.", ""]
  for part in PARTS:
    rs = [r for r in recs if r["part"] == part]
    head = next((r for r in rs if r.get("record") == "part"), {"status": "missing"})
    lines += [f"## {part}: {head['status']} ({head.get('seconds', '?')} s)", "",
              "| status | record |", "|---|---|"]
    lines += [_row(r) for r in rs if r.get("record") != "part"]
    for r in rs:
      if r.get("traceback"):
        lines += ["", f"```\n{r.get('error', '')}\n{r['traceback']}\n```"]
    lines.append("")
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write("\n".join(lines))


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", help="folder for accelerator.jsonl and summary.md")
  p.add_argument("--smoke", action="store_true", help="toy sizes on CPU")
  p.add_argument("--parts", default="", help=f"comma-separated subset of {','.join(PARTS)}")
  p.add_argument("--budget_s", type=float, default=0, help="time budget of the whole run")
  p.add_argument("--worker", choices=("step", "plan"), help=argparse.SUPPRESS)
  p.add_argument("--names", default="", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.smoke and not a.worker:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # Toy sizes: compile time is the cost, and XLA:CPU's optimisation passes are most of it.
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = flags + " --xla_backend_optimization_level=0"
  if a.worker:
    names = a.names.split(",")
    return worker_step(names, a.smoke) if a.worker == "step" else worker_plan(names, a.smoke)
  if not a.out:
    p.error("--out is required")
  t0 = time.perf_counter()
  rec, sz = Recorder(a.out), sizes(a.smoke)
  state = {"smoke": a.smoke, "deadline": t0 + (a.budget_s or sz["budget_s"])}
  parts = (part_environment, part_kernels, part_attention, part_train_step, part_planner,
           part_blockwise)
  chosen = a.parts.split(",") if a.parts else PARTS
  for name, fn in zip(PARTS, parts):
    if name in chosen:
      run_part(rec, name, fn, sz, state)
    else:
      rec.add(name, "skipped", record="part", reason="not in --parts")
  write_summary(a.out, rec.records, a.smoke, time.perf_counter() - t0)
  print(f"wrote {rec.path} and {os.path.join(a.out, 'summary.md')}", flush=True)


if __name__ == "__main__":
  main()
