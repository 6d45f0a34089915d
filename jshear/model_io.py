"""A jshear model directory: config + Orbax params + tokenizer, written atomically.

  DIR/model_config.json   ModelConfig (jshear's own form)
  DIR/params/             Orbax checkpoint of the params pytree
  DIR/tokenizer/          tokenizer files copied from the source model, when it had them

Training checkpoints (optimizer, data state, ...) live in `jshear.checkpoint`; this is the
hand-off format between stages and the converter's output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import jax
import orbax.checkpoint as ocp

from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.model.params import param_shapes

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja", "generation_config.json")


@contextlib.contextmanager
def atomic_dir(path: str, overwrite: bool = False):
  """Yield a temp dir beside `path`; rename it into place only if the block succeeds, so a
  failed or killed conversion never leaves a half-written output."""
  path = os.path.abspath(path)
  if os.path.exists(path) and not overwrite:
    raise JShearError(f"output {path} already exists (pass --overwrite to replace it)")
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if os.path.exists(path):
    shutil.rmtree(path)
  os.rename(tmp, path)


def copy_tokenizer(src_dir: str, dst_dir: str) -> list[str]:
  copied = []
  for name in TOKENIZER_FILES:
    src = os.path.join(src_dir, name)
    if os.path.exists(src):
      os.makedirs(dst_dir, exist_ok=True)
      shutil.copy2(src, os.path.join(dst_dir, name))
      copied.append(name)
  return copied


def check_param_shapes(cfg: ModelConfig, params, where: str) -> None:
  want = param_shapes(cfg)
  got = jax.tree.map(lambda x: tuple(x.shape), params)
  flat_want = dict(jax.tree_util.tree_flatten_with_path(
      want, is_leaf=lambda x: isinstance(x, tuple))[0])
  flat_got = dict(jax.tree_util.tree_flatten_with_path(
      got, is_leaf=lambda x: isinstance(x, tuple))[0])
  for k in set(flat_want) | set(flat_got):
    name = jax.tree_util.keystr(k)
    if k not in flat_got:
      raise JShearError(f"{where}: parameter {name} is missing")
    if k not in flat_want:
      raise JShearError(f"{where}: unexpected parameter {name}")
    if flat_want[k] != flat_got[k]:
      raise JShearError(f"{where}: parameter {name} has shape {flat_got[k]}, "
                        f"expected {flat_want[k]} from the model config")


def save_model(path: str, cfg: ModelConfig, params, tokenizer_dir: str | None = None,
               overwrite: bool = False) -> str:
  check_param_shapes(cfg, params, path)
  with atomic_dir(path, overwrite) as tmp:
    with open(os.path.join(tmp, "model_config.json"), "w") as f:
      f.write(cfg.to_json())
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, "params"), params)
      ckptr.wait_until_finished()
    if tokenizer_dir:
      copy_tokenizer(tokenizer_dir, os.path.join(tmp, "tokenizer"))
  return os.path.abspath(path)


def load_config(path: str) -> ModelConfig:
  cfg_path = os.path.join(path, "model_config.json")
  if not os.path.exists(cfg_path):
    raise JShearError(f"{path} is not a jshear model directory ({cfg_path} is missing)")
  with open(cfg_path) as f:
    return ModelConfig.from_json(f.read())


def load_model(path: str, shardings=None, dtype=None):
  """Returns (cfg, params). `shardings` (a pytree of NamedSharding matching the params) makes
  every host read only its own shards; without it, arrays land on the default device."""
  cfg = load_config(path)
  path = os.path.abspath(path)
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(os.path.join(path, "params"))
    tree = meta.item_metadata if hasattr(meta, "item_metadata") else meta
    stored = jax.tree.map(lambda m: (tuple(m.shape), m.dtype), tree,
                          is_leaf=lambda m: hasattr(m, "shape"))
    check_param_shapes(cfg, jax.tree.map(lambda s: _Shape(s[0]), stored,
                                         is_leaf=lambda x: isinstance(x, tuple)), path)
    if shardings is None:
      dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      shardings = jax.tree.map(lambda _: dev, stored, is_leaf=lambda x: isinstance(x, tuple))
    target = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s[0], dtype or s[1], sharding=sh),
        stored, shardings, is_leaf=lambda x: isinstance(x, tuple))
    params = ckptr.restore(os.path.join(path, "params"), target)
  return cfg, params


def tokenizer_dir(path: str) -> str | None:
  d = os.path.join(path, "tokenizer")
  return d if os.path.isdir(d) else None


class _Shape:
  """Shape-only stand-in so `check_param_shapes` can run on checkpoint metadata."""

  def __init__(self, shape):
    self.shape = shape
