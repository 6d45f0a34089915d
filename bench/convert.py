"""Converter throughput and memory on a LLaMA2-7B-shaped checkpoint (random bf16, ~13.5 GB),
or 1B-shaped with --small: import-hf and export-hf each run as a child process, timed, with
their peak RSS, beside a plain sequential read of the same safetensors files in the same run.
Targets: peak RSS < 3 GiB, import >= 50% of the plain-read throughput.
For context it also times what every import pays regardless of its own speed: a child that only
imports the converter (interpreter + jax start-up), and a plain copy of the files (writing as
many bytes as the import does).

  python bench/convert.py [--small] [--dir /big/tmp]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import common
import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

SHAPES = {
    "7b": dict(vocab=32000, hidden=4096, inter=11008, layers=32, heads=32),
    "1b": dict(vocab=32000, hidden=2048, inter=5504, layers=16, heads=16),
}


def write_checkpoint(path: str, s: dict, shard_bytes: int = 2 << 30) -> int:
  """Random bf16 LLaMA-shaped safetensors shards + index + config.json; returns bytes."""
  os.makedirs(path, exist_ok=True)
  rng = np.random.default_rng(0)
  D, I, V, L = s["hidden"], s["inter"], s["vocab"], s["layers"]
  tensors = [("model.embed_tokens.weight", (V, D)), ("model.norm.weight", (D,)),
             ("lm_head.weight", (V, D))]
  for i in range(L):
    p = f"model.layers.{i}."
    tensors += [(p + "self_attn.q_proj.weight", (D, D)), (p + "self_attn.k_proj.weight", (D, D)),
                (p + "self_attn.v_proj.weight", (D, D)), (p + "self_attn.o_proj.weight", (D, D)),
                (p + "mlp.gate_proj.weight", (I, D)), (p + "mlp.up_proj.weight", (I, D)),
                (p + "mlp.down_proj.weight", (D, I)), (p + "input_layernorm.weight", (D,)),
                (p + "post_attention_layernorm.weight", (D,))]
  shard, size, files, weight_map, total = {}, 0, [], {}, 0

  def flush():
    nonlocal shard, size
    if shard:
      name = f"model-{len(files) + 1:05d}.safetensors"
      save_file(shard, os.path.join(path, name), metadata={"format": "pt"})
      files.append(name)
      weight_map.update({k: name for k in shard})
      shard, size = {}, 0

  for name, shape in tensors:
    w = (0.02 * rng.standard_normal(shape, np.float32)).astype(ml_dtypes.bfloat16)
    if size + w.nbytes > shard_bytes:
      flush()
    shard[name], size, total = w, size + w.nbytes, total + w.nbytes
  flush()
  with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"model_type": "llama", "vocab_size": V, "hidden_size": D, "intermediate_size": I,
               "num_hidden_layers": L, "num_attention_heads": s["heads"],
               "num_key_value_heads": s["heads"], "rms_norm_eps": 1e-5,
               "tie_word_embeddings": False, "rope_parameters": {"rope_type": "default",
                                                                 "rope_theta": 10000.0}}, f)
  return total


def plain_copy(path: str, dst: str) -> float:
  os.makedirs(dst)
  t = time.perf_counter()
  for name in sorted(os.listdir(path)):
    if name.endswith(".safetensors"):
      shutil.copyfile(os.path.join(path, name), os.path.join(dst, name))
  s = time.perf_counter() - t
  shutil.rmtree(dst)
  return s


def plain_read(path: str) -> float:
  t = time.perf_counter()
  for name in sorted(os.listdir(path)):
    if name.endswith(".safetensors"):
      with open(os.path.join(path, name), "rb") as f:
        while f.read(64 << 20):
          pass
  return time.perf_counter() - t


# Runs one command and prints its peak RSS (KiB), so each child is measured on its own.
_WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


def child(cmd) -> tuple[float, float]:
  """(wall seconds, peak RSS GiB) of one child process."""
  t = time.perf_counter()
  r = subprocess.run([sys.executable, "-c", _WRAP, *cmd], capture_output=True, text=True)
  wall = time.perf_counter() - t
  if r.returncode:
    raise SystemExit(f"{cmd} failed:\n{r.stderr[-2000:]}")
  return wall, int(r.stdout.strip().splitlines()[-1]) / 2 ** 20


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--small", action="store_true", help="1B-shaped instead of 7B-shaped")
  p.add_argument("--dir", default=None, help="scratch directory (needs ~3x the model size)")
  a = p.parse_args()
  size = "1b" if a.small else "7b"
  root = tempfile.mkdtemp(prefix="jshear-bench-convert-", dir=a.dir)
  try:
    hf, ckpt, out = (os.path.join(root, n) for n in ("hf", "ckpt", "export"))
    total = write_checkpoint(hf, SHAPES[size])
    read_s = plain_read(hf)  # warm page cache for both sides alike
    read_s = min(read_s, plain_read(hf))
    py = [sys.executable, "-m", "jshear.convert"]
    imp_s, imp_rss = child(py + ["import-hf", hf, ckpt])
    exp_s, exp_rss = child(py + ["export-hf", ckpt, out])
    shutil.rmtree(ckpt)  # the copy below needs the space (7B: 4 x 13.5 GB otherwise)
    shutil.rmtree(out)
    startup_s, _ = child([sys.executable, "-c", "import jshear.convert.hf_import"])
    copy_s = plain_copy(hf, os.path.join(root, "copy"))
    gb = total / 1e9
    common.emit(bench="convert", shape=size, bytes=total, plain_read_gb_per_s=gb / read_s,
                import_s=imp_s, import_gb_per_s=gb / imp_s, import_vs_plain_read=read_s / imp_s,
                import_peak_rss_gib=imp_rss, export_s=exp_s, export_peak_rss_gib=exp_rss,
                import_startup_s=startup_s, plain_copy_s=copy_s)
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
