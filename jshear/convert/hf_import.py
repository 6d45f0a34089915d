"""Hugging Face safetensors directory -> jshear params (and model directory).

Every tensor is checked on the way: missing, misshapen, of an unknown dtype or holding a
non-finite value, it is refused with its name (before anything is written, or inside the
atomic output dir, which a failure removes)."""

from __future__ import annotations

import contextlib
import glob
import json
import os

import jax
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
import numpy as np
from safetensors import SafetensorError, safe_open

from jshear import model_io
from jshear.convert import hf_names
from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.model.finite import check_finite
from jshear.model.params import fuse_layers

_PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
# Tensors HF checkpoints sometimes carry that jshear recomputes or never uses.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_ST_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


class TensorReader:
  """Reads one tensor at a time from a (possibly sharded) safetensors checkpoint.

  Each read opens the file with `safe_open` and closes it again: safe_open maps the whole
  file, and pages it touched count towards RSS until the map goes away (a kept-open 7B
  checkpoint grew RSS to 13 GiB), so the map lives only as long as one tensor's copy."""

  def __init__(self, hf_dir: str, allow_pickle: bool = False):
    self.hf_dir = hf_dir
    self._meta: dict[str, dict[str, str]] = {}  # file -> {tensor: stored dtype}
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    single = os.path.join(hf_dir, "model.safetensors")
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
      self.file_of = {k: os.path.join(hf_dir, v) for k, v in weight_map.items()}
    elif os.path.exists(single):
      self.file_of = {k: single for k in self._dtypes(single)}
    else:
      pickles = [p for pat in _PICKLE_PATTERNS for p in glob.glob(os.path.join(hf_dir, pat))]
      if pickles and not allow_pickle:
        raise JShearError(
            f"{hf_dir} holds only pickle checkpoints ({', '.join(map(os.path.basename, pickles))}); "
            "pickle files can run arbitrary code when loaded. Convert them to safetensors, or "
            "pass --allow-pickle if you trust them.")
      if pickles:
        self.file_of = _pickle_tensors(pickles)
        return
      raise JShearError(f"no model.safetensors or model.safetensors.index.json in {hf_dir}")

  def names(self) -> set[str]:
    return set(self.file_of)

  @contextlib.contextmanager
  def _open(self, src: str):
    if not os.path.exists(src):
      raise JShearError(f"{src} (listed in the safetensors index) does not exist")
    try:
      with safe_open(src, "numpy") as f:
        yield f
    except (SafetensorError, OSError) as e:
      raise JShearError(f"{src} is not a readable safetensors file: {e}") from e

  def _dtypes(self, src: str) -> dict[str, str]:
    if src not in self._meta:
      with self._open(src) as f:
        self._meta[src] = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    return self._meta[src]

  def _stored(self, src: str, name: str) -> str:
    stored = self._dtypes(src).get(name)
    if stored is None:
      raise JShearError(f"tensor {name!r} is missing from {src} (the safetensors index lists it "
                        "there)")
    if stored not in _ST_DTYPES:
      raise JShearError(f"tensor {name!r} in {src} has dtype {stored}; jshear imports "
                        f"{', '.join(_ST_DTYPES)}")
    return stored

  def dtype(self, name: str) -> np.dtype:
    """Stored dtype of one tensor, without reading it."""
    src = self.file_of.get(name)
    if src is None or isinstance(src, np.ndarray):  # missing (get raises) or pickle-loaded
      return self.get(name).dtype
    return np.dtype(_ST_DTYPES[self._stored(src, name)])

  def get(self, name: str) -> np.ndarray:
    if name not in self.file_of:
      raise JShearError(f"tensor {name!r} is missing from {self.hf_dir}")
    src = self.file_of[name]
    if isinstance(src, np.ndarray):
      return src
    self._stored(src, name)
    with self._open(src) as f:
      return f.get_tensor(name)


def _pickle_tensors(paths):
  try:
    import torch  # only needed for trusted pickle checkpoints
  except ImportError as e:
    raise JShearError("--allow-pickle needs torch installed to read .bin checkpoints") from e
  out = {}
  for p in paths:
    for k, v in torch.load(p, map_location="cpu", weights_only=True).items():
      out[k] = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
  return out


def _checked(reader: TensorReader, cfg: ModelConfig, name: str, part: str) -> np.ndarray:
  w = reader.get(name)
  want = hf_names.hf_shape(cfg, part)
  if tuple(w.shape) != want:
    raise JShearError(f"tensor {name!r} has shape {tuple(w.shape)}, expected {want} "
                      f"from config.json")
  return check_finite(w, name, reader.hf_dir)  # a NaN or inf source is refused here


def _to_jshear(cfg: ModelConfig, part: str, w: np.ndarray) -> np.ndarray:
  """`hf_names.to_jshear` as a C-contiguous array (what the writer and jax want)."""
  out = hf_names.to_jshear(cfg, part, w)
  if out.flags.c_contiguous or w.ndim != 2:
    return np.ascontiguousarray(out)
  # Every non-trivial layout starts with w.T: do that copy the fast way, the rest are views.
  return np.ascontiguousarray(hf_names.to_jshear(cfg, part, hf_names.transpose_2d(w).T))


def iter_hf_params(reader: TensorReader, cfg: ModelConfig):
  """Yield (leaf name, layer index or None, C-contiguous array in jshear layout), one
  tensor (or one layer's fused tensor) at a time; checks that every tensor is known and present."""
  used = set()
  for part, name in hf_names.global_table(cfg).items():
    used.add(name)
    yield part, None, _to_jshear(cfg, part, _checked(reader, cfg, name, part))
  table = hf_names.layer_table(cfg)
  for i in range(cfg.num_layers):
    parts = {}
    for part, suffix in table.items():
      name = hf_names.hf_layer_name(i, suffix)
      used.add(name)
      parts[part] = _to_jshear(cfg, part, _checked(reader, cfg, name, part))
    if cfg.family == "parallel":
      one = cfg.replace(num_layers=1)
      parts = {k: v[0] for k, v in fuse_layers(one, {k: v[None] for k, v in parts.items()},
                                               xp=np).items()}
    for part, w in parts.items():
      yield f"layers.{part}", i, w
  extra = sorted(n for n in reader.names() - used
                 if not n.endswith(_IGNORED_SUFFIXES) and not (cfg.tie_embeddings and
                                                               n == "lm_head.weight"))
  if extra:
    raise JShearError(f"{reader.hf_dir} has tensors jshear does not know ({len(extra)}): "
                      f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")


def read_hf_params(hf_dir: str, cfg: ModelConfig | None = None, allow_pickle: bool = False):
  """Returns (cfg, params as numpy), the whole model in memory."""
  cfg = cfg or ModelConfig.from_hf_dir(hf_dir)
  params = {"layers": {}}
  for name, layer, w in iter_hf_params(TensorReader(hf_dir, allow_pickle), cfg):
    if layer is None:
      params[name] = w
      continue
    leaf = name.split(".", 1)[1]
    if leaf not in params["layers"]:
      params["layers"][leaf] = np.empty((cfg.num_layers,) + w.shape, w.dtype)
    params["layers"][leaf][layer] = w
  return cfg, params


def read_model(path: str, dtype=None):
  """(cfg, params as host numpy arrays) of a jshear model dir or an HF dir; `dtype` casts.
  The one reader of "any model dir" with weights (configs alone: `model_io.read_model_config`)."""
  if model_io.is_jshear_dir(path):
    return model_io.load_model(path, dtype=dtype)
  cfg, params = read_hf_params(path)
  if dtype is not None:
    params = jax.tree.map(lambda x: x.astype(dtype), params)
  return cfg, params


def import_hf(hf_dir: str, out_dir: str, overwrite: bool = False,
              allow_pickle: bool = False) -> str:
  """Streams an HF checkpoint into a jshear model dir: in memory, about one tensor being
  converted plus the writes still queued (model_io.ParamWriter.MAX_IN_FLIGHT)."""
  if not os.path.isdir(hf_dir):
    raise JShearError(f"{hf_dir} is not a directory")
  if os.path.exists(out_dir) and not overwrite:
    raise JShearError(f"output {out_dir} already exists (pass --overwrite to replace it)")
  cfg = ModelConfig.from_hf_dir(hf_dir)
  reader = TensorReader(hf_dir, allow_pickle)
  # Each parameter keeps its stored dtype (fused parallel weights take q_proj's).
  dtypes = {part: reader.dtype(name) for part, name in hf_names.global_table(cfg).items()}
  for part, suffix in hf_names.layer_table(cfg).items():
    dtypes[f"layers.{part}"] = reader.dtype(hf_names.hf_layer_name(0, suffix))
  if cfg.family == "parallel":
    dtypes["layers.w_in"] = dtypes["layers.w_out"] = dtypes["layers.wq"]
  with model_io.model_writer(out_dir, cfg, dtypes, tokenizer_dir=hf_dir,
                             overwrite=overwrite) as writer:
    for name, layer, w in iter_hf_params(reader, cfg):
      writer.write(name, w, layer)  # nothing changes w later, so it may stay queued
  return os.path.abspath(out_dir)
