"""Shardings for the whole train state, derived from the model's logical axes.

Params and LoRA adapters (`state["lora"]`) follow `jshear.sharding.RULES`; optimizer
moments follow the leaf they belong to (matched by tree path); masks, lambdas, counters and
the rng are replicated.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding

from jshear import sharding as shd
from jshear.model.config import ModelConfig
from jshear.model.lora import adapter_axes
from jshear.model.params import param_axes


def param_shardings(cfg: ModelConfig, params_abstract, mesh):
  return shd.tree_shardings(params_abstract, param_axes(cfg), mesh)


def state_shardings(cfg: ModelConfig, state_abstract: dict, mesh) -> dict:
  sharded = {"params": param_shardings(cfg, state_abstract["params"], mesh)}
  if "lora" in state_abstract:
    sharded["lora"] = shd.tree_shardings(state_abstract["lora"],
                                         adapter_axes(cfg, tuple(state_abstract["lora"])), mesh)
  flat = lambda t: {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(t)[0]}
  by_key = {k: (flat(sh), {p: x.shape for p, x in flat(state_abstract[k]).items()})
            for k, sh in sharded.items()}
  rep = shd.replicated(mesh)

  def opt_leaf(path, x):
    # Moments of a leaf live at ...['params']<weight path> (or ['lora']<adapter path>)
    # inside the optimizer state.
    key = jax.tree_util.keystr(path)
    for k, (sh_by_path, shape_by_path) in by_key.items():
      marker = f"['{k}']"
      i = key.find(marker)
      sub = key[i + len(marker):] if i >= 0 else None
      if sub in sh_by_path and tuple(x.shape) == tuple(shape_by_path[sub]):
        return sh_by_path[sub]
    return rep

  out = {k: jax.tree.map(lambda _: rep, v) for k, v in state_abstract.items()
         if k not in sharded and k != "opt_state"}
  out.update(sharded)
  out["opt_state"] = jax.tree_util.tree_map_with_path(opt_leaf, state_abstract["opt_state"])
  return out


def put_global(tree, shardings):
  """Host numpy (same on every process) -> global arrays; each device gets only its shard."""
  def one(x, s: NamedSharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree.map(one, tree, shardings)
