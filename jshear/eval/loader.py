"""Load a model for evaluation: a jshear model dir (model_config.json + params/ + tokenizer/)
or a Hugging Face safetensors dir (config.json + model.safetensors + tokenizer files)."""

from __future__ import annotations

import dataclasses
import os

from jshear import model_io
from jshear.errors import JShearError
from jshear.model_io import load_tokenizer

_TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


@dataclasses.dataclass
class Loaded:
  cfg: object
  params: dict
  tokenizer: object
  kind: str     # "jshear" or "hf"
  path: str


def model_kind(path: str) -> str:
  if model_io.is_jshear_dir(path):
    return "jshear"
  if model_io.is_hf_dir(path):
    return "hf"
  if not os.path.isdir(path):
    raise JShearError(f"--model {path}: no such directory")
  raise JShearError(f"--model {path}: neither a jshear model dir (model_config.json) nor a "
                    f"Hugging Face dir (config.json)")


def tokenizer_path(path: str, kind: str | None = None) -> str:
  kind = kind or model_kind(path)
  d = os.path.join(path, "tokenizer") if kind == "jshear" else path
  if not (os.path.isdir(d) and any(os.path.exists(os.path.join(d, m)) for m in _TOKENIZER_MARKERS)):
    where = f"{d}/" if kind == "jshear" else f"{path}/"
    raise JShearError(
        f"model dir {path} has no tokenizer (expected one of {', '.join(_TOKENIZER_MARKERS)} in "
        f"{where}); pass --tokenizer=DIR, or re-create the model with `python -m jshear.convert` "
        f"from a source that has tokenizer files")
  return d


def load(path: str, tokenizer: str | None = None, dtype=None, with_params: bool = True) -> Loaded:
  """(cfg, params as jax arrays, tokenizer). `tokenizer` overrides the model's own."""
  import jax
  path = os.path.abspath(path)
  kind = model_kind(path)
  tok = load_tokenizer(tokenizer or tokenizer_path(path, kind))
  params = None
  if with_params:
    from jshear.convert.hf_import import read_model
    cfg, params = read_model(path, dtype=dtype)
    params = jax.device_put(params)
  else:
    cfg = model_io.read_model_config(path)
  return Loaded(cfg, params, tok, kind, path)
