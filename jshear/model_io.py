"""A jshear model directory: config + params + tokenizer, written atomically.

  DIR/model_config.json   ModelConfig (jshear's own form)
  DIR/params/<leaf>/      one zarr3 array per parameter, written and read with tensorstore
                          (the storage layer Orbax itself uses), chunked one layer at a time
  DIR/params/index.json   leaf paths, shapes and dtypes
  DIR/tokenizer/          tokenizer files copied from the source model, when it had them

Any model dir, jshear or Hugging Face (config.json + safetensors): `is_jshear_dir`,
`read_model_config` (no weights), `tokenizer_dir` and `load_tokenizer` here; its weights are
`jshear.convert.hf_import.read_model` (which imports this module, so it lives there).

Why not an Orbax PyTree checkpoint here: the converter must write a stacked [L, ...] weight
one layer at a time, so converting a 7B model needs about one tensor of RAM, and a sharded
loader must read only its shard; per-leaf tensorstore arrays give both. Training checkpoints
(optimizer, data state, ...) are Orbax (`jshear.checkpoint`).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import sys

import jax
import numpy as np
import tensorstore as ts

from jshear.atomic import atomic_dir
from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.model.finite import check_finite
from jshear.model.params import param_shapes

CONFIG_FILE = "model_config.json"
ORIGIN_FILE = "origin.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja", "generation_config.json")


def copy_tokenizer(src_dir: str, dst_dir: str) -> list[str]:
  copied = []
  for name in TOKENIZER_FILES:
    src = os.path.join(src_dir, name)
    if os.path.exists(src):
      os.makedirs(dst_dir, exist_ok=True)
      shutil.copy2(src, os.path.join(dst_dir, name))
      copied.append(name)
  return copied


def _flat_shapes(cfg: ModelConfig) -> dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(param_shapes(cfg),
                                              is_leaf=lambda x: isinstance(x, tuple))[0]
  return {_leaf_name(p): s for p, s in flat}


def _leaf_name(path) -> str:
  return ".".join(str(getattr(k, "key", k)) for k in path)


def _spec(root: str, name: str) -> dict:
  return {"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(root, name)}}


class ParamWriter:
  """Creates every parameter array up front, then accepts whole leaves or single layers.

  Writes run in the background (tensorstore's own threads) so the caller can read and convert
  the next tensor meanwhile; at most MAX_IN_FLIGHT bytes are queued, which bounds memory. A
  written array must not be modified until `close()`."""

  MAX_IN_FLIGHT = 256 << 20

  def __init__(self, root: str, cfg: ModelConfig, dtypes: dict[str, np.dtype]):
    self.root, self.shapes, self.arrays = root, _flat_shapes(cfg), {}
    self._pending = collections.deque()  # (write future, bytes), oldest first
    self._in_flight = 0
    os.makedirs(root, exist_ok=True)
    for name, shape in self.shapes.items():
      chunk = [1 if name.startswith("layers.") and i == 0 else n for i, n in enumerate(shape)]
      spec = _spec(root, name)
      # No fsync per chunk (tensorstore's default): it added 1-2.5 s to a 1.9 GB import here.
      # The model dir is atomic_dir's, which fsyncs every file once before the rename.
      spec["kvstore"]["file_io_sync"] = False
      self.arrays[name] = ts.open(
          spec, create=True, dtype=ts.dtype(np.dtype(dtypes[name]).name),
          shape=list(shape), chunk_layout=ts.ChunkLayout(write_chunk_shape=chunk)).result()
    with open(os.path.join(root, "index.json"), "w") as f:
      json.dump({n: {"shape": list(s), "dtype": np.dtype(dtypes[n]).name}
                 for n, s in self.shapes.items()}, f, indent=1)

  def write(self, name: str, value, layer: int | None = None) -> None:
    arr = self.arrays[name]
    want = tuple(arr.shape[1:] if layer is not None else arr.shape)
    if tuple(value.shape) != want:
      raise JShearError(f"parameter {name}{'' if layer is None else f'[{layer}]'} has shape "
                        f"{tuple(value.shape)}, expected {want}")
    value = np.asarray(value, arr.dtype.numpy_dtype)
    while self._pending and self._in_flight + value.nbytes > self.MAX_IN_FLIGHT:
      self._wait_oldest()
    self._pending.append(((arr[layer] if layer is not None else arr).write(value), value.nbytes))
    self._in_flight += value.nbytes

  def _wait_oldest(self) -> None:
    fut, nbytes = self._pending.popleft()
    self._in_flight -= nbytes
    fut.result()

  def close(self) -> None:
    """Waits for every queued write; raises the first error."""
    while self._pending:
      self._wait_oldest()

  def abort(self) -> None:
    """Waits for queued writes, ignoring their errors, so none lands after cleanup."""
    while self._pending:
      try:
        self._wait_oldest()
      except Exception:  # noqa: BLE001  (the caller is already raising the real error)
        pass


@contextlib.contextmanager
def model_writer(path: str, cfg: ModelConfig, dtypes: dict[str, np.dtype],
                 tokenizer_dir: str | None = None, overwrite: bool = False,
                 origin: dict | None = None):
  """Stream a model into a new model dir (atomic): `with model_writer(...) as w: w.write(...)`.
  `origin` (e.g. the source a pruned model came from) is kept in origin.json."""
  with atomic_dir(path, overwrite, flag="--overwrite") as tmp:
    with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
      f.write(cfg.to_json())
    if origin:
      with open(os.path.join(tmp, ORIGIN_FILE), "w") as f:
        json.dump(origin, f, indent=2, sort_keys=True)
    writer = ParamWriter(os.path.join(tmp, "params"), cfg, dtypes)
    try:
      yield writer
    except BaseException:
      writer.abort()
      raise
    writer.close()
    if tokenizer_dir:
      copy_tokenizer(tokenizer_dir, os.path.join(tmp, "tokenizer"))


def check_param_shapes(cfg: ModelConfig, params, where: str) -> None:
  want = _flat_shapes(cfg)
  got = {_leaf_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  for name in sorted(set(want) | set(got)):
    if name not in got:
      raise JShearError(f"{where}: parameter {name} is missing")
    if name not in want:
      raise JShearError(f"{where}: unexpected parameter {name}")
    if want[name] != got[name]:
      raise JShearError(f"{where}: parameter {name} has shape {got[name]}, "
                        f"expected {want[name]} from the model config")


def save_model(path: str, cfg: ModelConfig, params, tokenizer_dir: str | None = None,
               overwrite: bool = False, origin: dict | None = None) -> str:
  check_param_shapes(cfg, params, path)
  flat = {_leaf_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  with model_writer(path, cfg, {n: x.dtype for n, x in flat.items()}, tokenizer_dir,
                    overwrite, origin) as w:
    for name, x in flat.items():
      w.write(name, np.asarray(x))
  return os.path.abspath(path)


def load_config(path: str) -> ModelConfig:
  cfg_path = os.path.join(path, CONFIG_FILE)
  if not os.path.exists(cfg_path):
    raise JShearError(f"{path} is not a jshear model directory ({cfg_path} is missing)")
  with open(cfg_path) as f:
    return ModelConfig.from_json(f.read())


def open_params(path: str, cfg: ModelConfig | None = None) -> dict:
  """The params tree as lazy tensorstore arrays (index them, `np.asarray` to read)."""
  cfg = cfg or load_config(path)
  root = os.path.join(path, "params")
  index_path = os.path.join(root, "index.json")
  if not os.path.exists(index_path):
    raise JShearError(f"{path} has no params/index.json: not a complete jshear model directory")
  with open(index_path) as f:
    index = json.load(f)
  shapes = _flat_shapes(cfg)
  for name in sorted(set(shapes) | set(index)):
    if name not in index:
      raise JShearError(f"{path}: parameter {name} is missing")
    if name not in shapes:
      raise JShearError(f"{path}: unexpected parameter {name}")
    if tuple(index[name]["shape"]) != tuple(shapes[name]):
      raise JShearError(f"{path}: parameter {name} has shape {tuple(index[name]['shape'])}, "
                        f"expected {tuple(shapes[name])} from model_config.json")
  flat = {n: ts.open(_spec(root, n), open=True).result() for n in shapes}
  tree = {}
  for name, arr in flat.items():
    node = tree
    *parents, leaf = name.split(".")
    for k in parents:
      node = node.setdefault(k, {})
    node[leaf] = arr
  return tree


def load_model(path: str, shardings=None, dtype=None):
  """Returns (cfg, params). Without `shardings`: host numpy arrays. With a pytree of
  NamedSharding: global jax arrays, each process reading only the shards it holds."""
  cfg = load_config(path)
  lazy = open_params(path, cfg)

  def read(arr, sharding=None):
    cast = (lambda x: x.astype(dtype)) if dtype is not None else (lambda x: x)
    # Non-finite stored values are refused (jshear.model.finite), shard by shard.
    name = os.path.basename(os.path.normpath(arr.kvstore.path))
    get = lambda idx: cast(check_finite(arr[idx].read().result(), name, path,
                                        whole=lambda: arr.read().result()))
    if sharding is None:
      return get(...)
    return jax.make_array_from_callback(tuple(arr.shape), sharding, get)

  if shardings is None:
    return cfg, jax.tree.map(read, lazy, is_leaf=lambda x: isinstance(x, ts.TensorStore))
  return cfg, jax.tree.map(read, lazy, shardings, is_leaf=lambda x: isinstance(x, ts.TensorStore))


def params_fingerprint(params) -> str:
  """A content hash of a params tree (leaf paths, shapes, dtypes and bytes)."""
  import hashlib
  h = hashlib.blake2b(digest_size=16)
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    x = np.ascontiguousarray(np.asarray(x))
    h.update(f"{jax.tree_util.keystr(path)}:{x.shape}:{x.dtype}".encode())
    h.update(memoryview(x).cast("B"))
  return h.hexdigest()


def load_origin(path: str) -> dict | None:
  """Where a model dir came from (`origin.json`: source path and content hash), if recorded."""
  p = os.path.join(path, ORIGIN_FILE)
  if not os.path.exists(p):
    return None
  with open(p) as f:
    return json.load(f)


def tokenizer_dir(path: str) -> str | None:
  """Where a model dir keeps its tokenizer: a jshear dir's tokenizer/ (None without one),
  an HF dir itself (whether or not it has tokenizer files)."""
  if not is_jshear_dir(path):
    return path
  d = os.path.join(path, "tokenizer")
  return d if os.path.isdir(d) else None


# ---- any model dir: jshear or Hugging Face ------------------------------------------------

def is_jshear_dir(path: str) -> bool:
  """A jshear model dir (model_config.json); anything else is read as an HF dir."""
  return os.path.isfile(os.path.join(path, CONFIG_FILE))


def is_hf_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "config.json"))


def read_model_config(path: str) -> ModelConfig:
  """A jshear or HF model dir's config, without reading weights."""
  if is_jshear_dir(path):
    return load_config(path)
  return ModelConfig.from_hf_dir(path)


def load_tokenizer(path: str, label: str | None = None):
  """The Hugging Face tokenizer in directory `path`, read offline. `label` names `path` in
  the error when there is no such directory (e.g. the flag that gave it)."""
  if not os.path.isdir(path):
    raise JShearError(f"{label or path}: expected a Hugging Face tokenizer directory, "
                      "got no such directory")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  from transformers import AutoTokenizer  # slow import: only when a tokenizer is needed
  try:
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
  except Exception as e:  # noqa: BLE001 - transformers raises many types here
    raise JShearError(f"could not load a tokenizer from {path}: {type(e).__name__}: {e}") from e
  tok.model_max_length = sys.maxsize  # documents are longer than any context: no warning
  return tok
