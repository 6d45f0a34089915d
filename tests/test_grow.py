"""Depth growth (jshear/model/grow.py): which source layer each grown layer copies, that
copies are independent, that `zero` growth computes the source's logits on both families,
and the growth-timing formula."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jshear.errors import JShearError
from jshear.model import grow as grow_mod
from jshear.model.config import ModelConfig
from jshear.model.params import init_params
from jshear.model.transformer import forward

FAMILIES = {
    "llama": ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=3,
                         num_heads=4, num_kv_heads=2, head_dim=8),
    "llama_qwen2": ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=3,
                               num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=True),
    "parallel": ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=3,
                            num_heads=4, num_kv_heads=4, head_dim=8, family="parallel",
                            qk_norm=True),
}


def _params(cfg, seed=0):
  p = init_params(cfg, jax.random.PRNGKey(seed))
  # norms away from one and biases away from zero, so a wrong copy cannot pass by accident
  return jax.tree.map(lambda x: x + 0.01 * jax.random.normal(jax.random.PRNGKey(seed + 1),
                                                              x.shape), p)


def _same(a, k, b, i):
  return all(np.array_equal(np.asarray(a["layers"][n][k]), np.asarray(b["layers"][n][i]))
             for n in a["layers"])


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("operator,source_of", [
    ("stack", lambda k, n, g: k % n), ("interleave", lambda k, n, g: k // g)])
def test_stack_and_interleave_copy_the_right_source_layer(family, operator, source_of):
  cfg = FAMILIES[family]
  p = _params(cfg)
  g = 4
  new_cfg, q = grow_mod.grow(cfg, p, g, operator)
  assert new_cfg.num_layers == cfg.num_layers * g
  n = cfg.num_layers
  for k in range(n * g):
    want = source_of(k, n, g)
    assert _same(q, k, p, want), (k, want)
    for other in set(range(n)) - {want}:
      assert not _same(q, k, p, other)
  for key in p:
    if key != "layers":
      np.testing.assert_array_equal(q[key], p[key])


def test_every_copy_is_its_own_array():
  cfg = FAMILIES["llama"]
  p = jax.device_get(_params(cfg))  # host arrays, as the grow stage gets them
  _, q = grow_mod.grow(cfg, p, 2, "stack")
  layers, source = q["layers"]["wq"], p["layers"]["wq"]
  twin, before = layers[3].copy(), source.copy()
  layers[0] += 1.0   # moving grown layer 0 moves neither its twin (layer 3) nor the source
  np.testing.assert_array_equal(layers[3], twin)
  np.testing.assert_array_equal(source, before)
  assert not np.shares_memory(layers, source)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_zero_growth_keeps_the_logits(family):
  cfg = FAMILIES[family]
  p = _params(cfg)
  new_cfg, q = grow_mod.grow(cfg, p, 3, "zero", rng=jax.random.PRNGKey(7))
  tokens = jax.random.randint(jax.random.PRNGKey(3), (2, 12), 0, cfg.vocab_size)
  want = forward(p, tokens, cfg=cfg)
  got = forward(q, tokens, cfg=new_cfg)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  for k in range(0, new_cfg.num_layers, 3):   # source layer i sits at i * g
    assert _same(q, k, p, k // 3)
  # ... and its new layers are not copies: their input weights are fresh
  name = "wq" if cfg.family == "llama" else "w_in"
  assert not np.allclose(q["layers"][name][1], p["layers"][name][0])


def test_random_growth_draws_every_new_weight():
  cfg = FAMILIES["llama"]
  p = _params(cfg)
  new_cfg, q = grow_mod.grow(cfg, p, 2, "random", rng=jax.random.PRNGKey(1))
  for k in range(1, new_cfg.num_layers, 2):
    assert np.abs(np.asarray(q["layers"]["wo"][k])).sum() > 0   # not zeroed
    assert not any(_same(q, k, p, i) for i in range(cfg.num_layers))
  tokens = jnp.zeros((1, 8), jnp.int32)
  assert not np.allclose(forward(q, tokens, cfg=new_cfg), forward(p, tokens, cfg=cfg), atol=1e-3)


def test_factor_and_target_layers():
  assert grow_mod.growth_factor(6, factor=4) == 4
  assert grow_mod.growth_factor(6, target_layers=24) == 4
  for kw in ({"target_layers": 20}, {"factor": 1}, {}, {"factor": 2, "target_layers": 12}):
    with pytest.raises(JShearError):
      grow_mod.growth_factor(6, **kw)
  with pytest.raises(JShearError):
    grow_mod.grown_layers(3, 2, "copy")


def test_timing_gives_the_papers_figure_and_warns_outside_its_range():
  # LLaMA2-7B trained on 2T tokens: C = 6 N D
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    d = grow_mod.timing(7e9, 6 * 7e9 * 2e12)
  assert d == pytest.approx(11.1e9, rel=0.01)
  with pytest.warns(UserWarning, match="outside the range"):
    tiny = grow_mod.timing(135e6, 6 * 135e6 * 1e7)
  assert tiny > 1e7  # larger than the whole CPU budget: the formula does not scale down
  with pytest.raises(JShearError):
    grow_mod.timing(0, 1e20)
