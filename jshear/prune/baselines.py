"""One-shot mask choosers used as baselines: random and weight magnitude.

Each returns per-group scores; `masks_from_scores` keeps the top units with the same rules
as learned masks (per layer for [L, .] groups, global for layer and hidden, equal query
heads inside kept KV groups), and `jshear.prune.finalize` slices. So every method meets
the target shape the same way and differs only in how it ranks units.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jshear.model.config import ModelConfig
from jshear.model.masks import mask_shapes
from jshear.model.params import unfuse_layers
from jshear.prune.deterministic import deterministic_masks
from jshear.prune.targets import TargetShape, validate_target


def random_scores(cfg: ModelConfig, groups, seed: int) -> dict:
  shapes = mask_shapes(cfg)
  keys = jax.random.split(jax.random.key(seed), len(groups))
  return {g: jax.random.uniform(k, shapes[g]) for k, g in zip(keys, groups)}


def magnitude_scores(cfg: ModelConfig, params, groups) -> dict:
  """L2 norm of every weight a unit owns (rows in and out)."""
  lp = params["layers"] if cfg.family == "llama" else unfuse_layers(cfg, params["layers"])
  sq = lambda x, axes: jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axes)
  head = sq(lp["wq"], (1, 3)) + sq(lp["wo"], (2, 3))                        # [L, H]
  kv_own = sq(lp["wk"], (1, 3)) + sq(lp["wv"], (1, 3))                      # [L, KV]
  if cfg.qkv_bias:  # biases go with their heads (shared q/k norms belong to no unit)
    head = head + sq(lp["bq"], 2)
    kv_own = kv_own + sq(lp["bk"], 2) + sq(lp["bv"], 2)
  kv = kv_own + head.reshape(cfg.num_layers, cfg.num_kv_heads, -1).sum(-1)
  inter = sq(lp["w_gate"], 1) + sq(lp["w_up"], 1) + sq(lp["w_down"], 2)    # [L, I]
  hidden = sq(params["embed"], 0)
  for name in ("wq", "wk", "wv", "w_gate", "w_up"):
    hidden = hidden + sq(lp[name], tuple(a for a in range(lp[name].ndim) if a != 1))
  hidden = hidden + sq(lp["wo"], (0, 1, 2)) + sq(lp["w_down"], (0, 1))
  layer = (jnp.sum(head, 1) + jnp.sum(kv_own, 1) + jnp.sum(inter, 1)) / (
      lp["wq"][0].size * 2 + lp["wk"][0].size * 2 + lp["w_gate"][0].size * 3)
  all_scores = {"layer": layer, "head": head, "kv": kv, "intermediate": inter,
                "hidden": hidden}
  return {g: jnp.sqrt(all_scores[g]) for g in groups}


def masks_from_scores(cfg: ModelConfig, scores: dict, target: TargetShape) -> dict:
  """0/1 masks keeping exactly `target`, highest scores first (ties: lower index)."""
  validate_target(cfg, target, tuple(scores))
  return {g: np.asarray(m) for g, m in
          deterministic_masks(scores, cfg, target, binary=True).items()}
