"""jshear params -> Hugging Face directory (safetensors shards + config.json + tokenizer).

LLaMA family -> LlamaForCausalLM, or Qwen2ForCausalLM (q/k/v biases) / Qwen3ForCausalLM
(q/k norms), see `ModelConfig.hf_model_type`; parallel family -> CohereForCausalLM (same
math: one bias-free LayerNorm per block, parallel attention + SwiGLU, per-head q/k LayerNorm,
interleaved RoPE, logit_scale). Shards are written one at a time, so peak memory is one
shard plus the params already held.
"""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import save_file

from jshear import model_io
from jshear.atomic import atomic_dir
from jshear.convert import hf_names
from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.model.params import unfuse_layers

_DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def hf_tensors(cfg: ModelConfig, params):
  """Yield (hf_name, numpy array) for every tensor in HF layout, reading one layer at a time
  (params may be numpy arrays or lazy tensorstore arrays from `model_io.open_params`)."""
  for part, name in hf_names.global_table(cfg).items():
    yield name, hf_names.to_hf(cfg, part, np.asarray(params[part]))
  one = cfg.replace(num_layers=1)
  for i in range(cfg.num_layers):
    layer = {k: np.asarray(v[i])[None] for k, v in params["layers"].items()}
    if cfg.family == "parallel":
      layer = unfuse_layers(one, layer, xp=np)
    for part, suffix in hf_names.layer_table(cfg).items():
      yield hf_names.hf_layer_name(i, suffix), hf_names.to_hf(cfg, part, layer[part][0])


def _dtype_of(x) -> np.dtype:
  return np.dtype(getattr(x.dtype, "numpy_dtype", x.dtype))


def export_hf(cfg: ModelConfig, params, out_dir: str, tokenizer_dir: str | None = None,
              dtype: str | None = None, overwrite: bool = False,
              max_shard_bytes: int = 2 << 30) -> str:
  """Write an HF model dir. `dtype` casts on the way out (default: keep the params' dtype,
  so a bf16 model is not silently exported as fp32 or vice versa)."""
  hf_cfg = cfg.to_hf_dict()
  out_dtype = np.dtype(dtype) if dtype else _dtype_of(params["embed"])
  hf_cfg["dtype"] = _DTYPE_NAMES.get(str(out_dtype), str(out_dtype))
  with atomic_dir(out_dir, overwrite, flag="--overwrite") as tmp:
    shard, shard_bytes, weight_map, files = {}, 0, {}, []

    def flush():
      nonlocal shard, shard_bytes
      if shard:
        fname = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shard, os.path.join(tmp, fname), metadata={"format": "pt"})
        files.append(fname)
        weight_map.update({k: fname for k in shard})
        shard, shard_bytes = {}, 0

    for name, w in hf_tensors(cfg, params):
      w = np.ascontiguousarray(w.astype(out_dtype))
      if shard_bytes + w.nbytes > max_shard_bytes:
        flush()
      shard[name] = w
      shard_bytes += w.nbytes
    flush()
    if len(files) == 1:
      os.rename(os.path.join(tmp, files[0]), os.path.join(tmp, "model.safetensors"))
    else:
      # Sharded layout: HF names the files model-0000k-of-0000n.safetensors.
      total = sum(os.path.getsize(os.path.join(tmp, f)) for f in files)
      renamed = {f: f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
                 for i, f in enumerate(files)}
      for old, new in renamed.items():
        os.rename(os.path.join(tmp, old), os.path.join(tmp, new))
      index = {"metadata": {"total_size": total},
               "weight_map": {k: renamed[v] for k, v in sorted(weight_map.items())}}
      with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_cfg, f, indent=2)
    if tokenizer_dir:
      model_io.copy_tokenizer(tokenizer_dir, tmp)
  return os.path.abspath(out_dir)


def export_model_dir(ckpt_dir: str, out_dir: str, dtype: str | None = None,
                     overwrite: bool = False) -> str:
  if os.path.exists(out_dir) and not overwrite:
    raise JShearError(f"output {out_dir} already exists (pass --overwrite to replace it)")
  cfg = model_io.load_config(ckpt_dir)
  params = model_io.open_params(ckpt_dir, cfg)  # lazy: read one layer at a time
  return export_hf(cfg, params, out_dir, tokenizer_dir=model_io.tokenizer_dir(ckpt_dir),
                   dtype=dtype, overwrite=overwrite)
