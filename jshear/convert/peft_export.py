"""Unmerged LoRA adapters -> a small directory in the PEFT layout, next to the merged model.

  DIR/adapter_config.json        peft_type LORA, r, lora_alpha, target_modules, lora_dropout
  DIR/adapter_model.safetensors  base_model.model.model.layers.{i}.<module>.lora_A.weight
                                 [r, in] and .lora_B.weight [out, r] (torch Linear layout)
  DIR/jshear_adapters.json       jshear's own view: rank, alpha, scale, targets, base shape

HF applies W x + scale * B (A x), so the merged weight is W + scale * lora_B @ lora_A; the
jshear adapters (A [in..., r], B [r, out...]) are their transposes, inputs flattened in the
same order as the dense weights' (`jshear.convert.hf_names.to_hf`).
"""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import save_file

from jshear.atomic import atomic_dir
from jshear.convert import hf_names
from jshear.model.config import ModelConfig
from jshear.model.lora import WEIGHT


def module_names(cfg: ModelConfig) -> dict:
  """LoRA target -> the HF module it adapts ("self_attn.q_proj", ...)."""
  table = hf_names.layer_table(cfg)
  return {t: table[w][:-len(".weight")] for t, w in WEIGHT.items()}


def peft_tensors(cfg: ModelConfig, adapters: dict):
  """(name, array) of every adapter matrix, one layer at a time."""
  modules = module_names(cfg)
  for t, ad in adapters.items():
    a, b = np.asarray(ad["a"]), np.asarray(ad["b"])
    r = a.shape[-1]
    for i in range(a.shape[0]):
      stem = f"base_model.model.{hf_names.hf_layer_name(i, modules[t])}"
      yield f"{stem}.lora_A.weight", np.ascontiguousarray(a[i].reshape(-1, r).T)
      yield f"{stem}.lora_B.weight", np.ascontiguousarray(b[i].reshape(r, -1).T)


def export_adapters(cfg: ModelConfig, adapters: dict, out_dir: str, *, rank: int,
                    alpha: float, dropout: float, base: str = "") -> str:
  """Writes DIR atomically (replacing an older one); `base`: the merged model's dir."""
  modules = module_names(cfg)
  peft = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": int(rank),
          "lora_alpha": float(alpha), "lora_dropout": float(dropout), "bias": "none",
          "target_modules": sorted(modules[t].split(".")[-1] for t in adapters),
          "fan_in_fan_out": False, "base_model_name_or_path": base}
  mine = {"rank": int(rank), "alpha": float(alpha), "scale": float(alpha) / int(rank),
          "targets": list(adapters), "dropout": float(dropout), "family": cfg.family,
          "base_config": json.loads(cfg.to_json()),
          "note": "the base weights are W_merged - scale * lora_B @ lora_A"}
  with atomic_dir(out_dir, True, flag="--overwrite") as tmp:
    save_file(dict(peft_tensors(cfg, adapters)), os.path.join(tmp, "adapter_model.safetensors"),
              metadata={"format": "pt"})
    for name, obj in (("adapter_config.json", peft), ("jshear_adapters.json", mine)):
      with open(os.path.join(tmp, name), "w") as f:
        json.dump(obj, f, indent=2)
  return os.path.abspath(out_dir)
