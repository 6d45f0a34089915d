"""Mask semantics on both block families: each mask equals the structural edit it stands for."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.model.masks import MASK_NAMES, ones_masks
from jshear.model.params import init_params, unfuse_layers, fuse_layers
from jshear.model.transformer import forward
from jshear.prune.slice import slice_model

TOL = 2e-5


def tiny(family, **kw):
  base = dict(vocab_size=96, hidden_size=48, intermediate_size=64, num_layers=3, num_heads=6,
              num_kv_heads=3, head_dim=8, family=family, qk_norm=family == "parallel",
              tie_embeddings=family == "parallel")
  base.update(kw)
  cfg = ModelConfig(**base)
  params = init_params(cfg, jax.random.key(0), std=0.2)
  # Non-trivial norm weights so a norm bug cannot hide behind ones.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.3 * jax.random.normal(jax.random.key(1), x.shape)
      if "norm" in jax.tree_util.keystr(p) else x, params)
  return cfg, params


TOKENS = np.random.default_rng(0).integers(0, 96, (2, 12)).astype(np.int32)
FAMILIES = ["llama", "parallel"]


def run(cfg, params, masks=None):
  return np.asarray(forward(params, TOKENS, masks, cfg=cfg))


def zero_at(m, idx):
  return m.at[idx].set(0.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_all_ones_masks_equal_no_masks(family):
  cfg, params = tiny(family)
  np.testing.assert_allclose(run(cfg, params, ones_masks(cfg)), run(cfg, params), atol=TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_head_mask_equals_zeroed_output_projection(family):
  cfg, params = tiny(family)
  masks = {"head": zero_at(jnp.ones((3, 6)), (1, 4))}
  parts = unfuse_layers(cfg, params["layers"]) if family == "parallel" else dict(params["layers"])
  parts["wo"] = parts["wo"].at[1, 4].set(0.0)
  edited = dict(params, layers=parts if family == "llama" else fuse_layers(cfg, parts))
  np.testing.assert_allclose(run(cfg, params, masks), run(cfg, edited), atol=TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_mask_equals_skipping_the_block(family):
  cfg, params = tiny(family)
  masks = {"layer": zero_at(jnp.ones(3), 1)}
  small_cfg, small = slice_model(cfg, params, {"layers": np.array([0, 2])})
  assert small_cfg.num_layers == 2
  np.testing.assert_allclose(run(cfg, params, masks), run(small_cfg, small), atol=TOL)
  # head_layer and mlp together are the same as layer.
  both = {"head_layer": masks["layer"], "mlp": masks["layer"]}
  np.testing.assert_allclose(run(cfg, params, both), run(small_cfg, small), atol=TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_mask_equals_removed_channels(family):
  cfg, params = tiny(family)
  drop = np.array([0, 5, 17, 30, 47])
  keep = np.setdiff1d(np.arange(48), drop)
  masks = {"hidden": jnp.ones(48).at[drop].set(0.0)}
  small_cfg, small = slice_model(cfg, params, {"hidden": keep})
  np.testing.assert_allclose(run(cfg, params, masks), run(small_cfg, small), atol=TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_intermediate_and_kv_masks_equal_slicing(family):
  cfg, params = tiny(family)
  inter = jnp.ones((3, 64)).at[:, ::4].set(0.0)
  kv = jnp.ones((3, 3)).at[0, 1].set(0.0).at[1, 2].set(0.0).at[2, 0].set(0.0)
  kept_kv = np.array([[0, 2], [0, 1], [1, 2]])
  kept_heads = np.stack([np.concatenate([np.arange(2 * g, 2 * g + 2) for g in row])
                         for row in kept_kv])
  kept_inter = np.tile(np.setdiff1d(np.arange(64), np.arange(0, 64, 4)), (3, 1))
  small_cfg, small = slice_model(cfg, params, {"kv": kept_kv, "heads": kept_heads,
                                               "intermediate": kept_inter})
  assert (small_cfg.num_heads, small_cfg.num_kv_heads, small_cfg.intermediate_size) == (4, 2, 48)
  got = run(cfg, params, {"intermediate": inter, "kv": kv})
  np.testing.assert_allclose(got, run(small_cfg, small), atol=TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_soft_masks_scale_linearly(family):
  """A soft layer-level mask s scales the sublayer output: s=0.5 differs from s=1 and s=0."""
  cfg, params = tiny(family)
  half = run(cfg, params, {"mlp": jnp.full(3, 0.5)})
  assert not np.allclose(half, run(cfg, params)) and np.all(np.isfinite(half))


def test_bad_masks_are_named():
  cfg, params = tiny("llama")
  with pytest.raises(JShearError, match="unknown mask 'heads'"):
    forward(params, TOKENS, {"heads": jnp.ones((3, 6))}, cfg=cfg)
  with pytest.raises(JShearError, match=r"mask 'head' has shape \(6,\), expected \(3, 6\)"):
    forward(params, TOKENS, {"head": jnp.ones(6)}, cfg=cfg)
  assert set(MASK_NAMES) == set(ones_masks(cfg))


def test_gqa_slice_refuses_heads_outside_kept_groups():
  cfg, params = tiny("llama")
  with pytest.raises(JShearError, match="not in kept KV group"):
    slice_model(cfg, params, {"kv": np.array([[0, 1]] * 3), "heads": np.array([[0, 1, 4, 5]] * 3)})
