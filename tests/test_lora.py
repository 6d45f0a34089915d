"""LoRA: the adapted forward is the dense forward of W + (alpha/r) A B, a fresh adapter is the
base model bitwise, training moves only the adapters (and only they have optimizer state),
the merged model equals the unmerged one, and bad LoRA settings are refused up front."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jshear.config_base import train_block
from jshear.errors import JShearError
from jshear.model import lora
from jshear.model.config import ModelConfig
from jshear.model.params import init_params as _init_params
from jshear.model.transformer import forward
from jshear.optim import build_optimizer
from jshear.train.adapters import LoraAddon
from jshear.train.step import build_step, init_state, lm_loss, step_addons, step_groups

LLAMA = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=8, remat="none")
PARALLEL = LLAMA.replace(family="parallel", qk_norm=True, logit_scale=0.5, scan_layers=False)
ALL = lora.TARGETS
# Jitted: eager init compiles every random op on its own (~10 s here).
init_params = jax.jit(_init_params, static_argnums=0)
init_adapters = jax.jit(lora.init_adapters, static_argnums=(0, 1, 2))
merge = jax.jit(lora.merge, static_argnums=(0, 3))


def _tokens(seed=0, B=4, T=12):
  return np.random.default_rng(seed).integers(0, 64, (B, T)).astype(np.int32)


def _batch(seed=0, B=8, T=16):
  toks = _tokens(seed, B, T)
  return {"tokens": toks, "segment_ids": np.ones_like(toks),
          "positions": np.tile(np.arange(T, dtype=np.int32), (B, 1))}


def _random_adapters(cfg, rank, targets, seed=1):
  """A trained-looking adapter: B random too (a fresh one has B = 0)."""
  ad = jax.device_get(init_adapters(cfg, rank, targets, jax.random.key(seed)))
  rng = np.random.default_rng(seed)
  return {t: {"a": v["a"], "b": 0.3 * rng.standard_normal(v["b"].shape, np.float32)}
          for t, v in ad.items()}


@functools.partial(jax.jit, static_argnames="cfg")
def _jit_forward(params, adapters, tokens, cfg):
  return forward(params, tokens, cfg=cfg, adapters=adapters)


def _forward(cfg, params, adapters=None):
  """Logits of a fixed batch; one compile per (cfg, adapter structure)."""
  return np.asarray(_jit_forward(params, adapters, _tokens(), cfg))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _by_hand(cfg, params, ad, scale):
  """llama only: W + scale * A B per targeted weight, written out with einsum."""
  layers = dict(params["layers"])
  for t, w in lora.WEIGHT.items():
    if t in ad:
      a, b = ad[t]["a"], ad[t]["b"]
      spec = {"q": "ldr,lrhk->ldhk", "k": "ldr,lrhk->ldhk", "v": "ldr,lrhk->ldhk",
              "o": "lhkr,lrd->lhkd"}.get(t, "lir,lro->lio")
      layers[w] = layers[w] + scale * jnp.einsum(spec, a, b)
  return {**params, "layers": layers}


@pytest.mark.parametrize("targets", [ALL, ("o", "down", "q")], ids=["all", "some"])
def test_lora_forward_equals_the_dense_forward_of_w_plus_scaled_ab(targets):
  cfg = LLAMA
  rank, alpha = 3, 6.0
  params = init_params(cfg, jax.random.key(0))
  ad = _random_adapters(cfg, rank, targets)
  scale = alpha / rank
  got = _forward(cfg, params, lora.Adapters(ad, None, scale))
  want = _forward(cfg, _by_hand(cfg, params, ad, scale))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  assert np.abs(want - _forward(cfg, params)).max() > 1e-2  # the adapter does something
  merged = merge(cfg, params, ad, scale)
  np.testing.assert_allclose(_forward(cfg, merged), want, atol=1e-5, rtol=1e-5)


def test_parallel_family_adapts_its_fused_projections_per_part():
  cfg = PARALLEL  # layers unrolled: the forward's other layer loop
  params = init_params(cfg, jax.random.key(0))
  for targets in (ALL, ("k", "up", "o")):
    ad = _random_adapters(cfg, 2, targets)
    got = _forward(cfg, params, lora.Adapters(ad, None, 2.0))
    merged = merge(cfg, params, ad, 2.0)
    np.testing.assert_allclose(got, _forward(cfg, merged), atol=1e-5, rtol=1e-5)
    assert np.abs(got - _forward(cfg, params)).max() > 1e-2
  # Only the parts a target owns change in the fused weights.
  ad = _random_adapters(cfg, 2, ("k",))
  merged = merge(cfg, params, ad, 2.0)
  d = np.array(merged["layers"]["w_in"] - params["layers"]["w_in"])
  H, KV, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  k_cols = slice(H * Dh, (H + KV) * Dh)
  assert np.abs(d[:, :, k_cols]).max() > 0
  d[:, :, k_cols] = 0
  assert np.abs(d).max() == 0
  np.testing.assert_array_equal(merged["layers"]["w_out"], params["layers"]["w_out"])


@pytest.mark.parametrize("cfg,rank", [(LLAMA, 3), (PARALLEL.replace(scan_layers=True), 2),
                                      (PARALLEL, 2)], ids=["llama", "parallel", "parallel-unrolled"])
def test_a_fresh_adapter_is_the_base_model_bitwise(cfg, rank):
  params = init_params(cfg, jax.random.key(0))
  ad = init_adapters(cfg, rank, ALL, jax.random.key(3))
  assert all(float(jnp.abs(v["a"]).max()) > 0 and float(jnp.abs(v["b"]).max()) == 0
             for v in ad.values())
  got, want = _forward(cfg, params, lora.Adapters(ad, None, 4.0)), _forward(cfg, params)
  if cfg.scan_layers or cfg.family == "llama":
    np.testing.assert_array_equal(got, want)
  else:  # XLA:CPU fuses the unrolled parallel block differently around the (zero) deltas:
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)  # measured 3.7e-8


def _lora_step(cfg, rank=4, alpha=8.0, dropout=0.0, lr=1e-2):
  block = train_block(steps=10, warmup_steps=0, lr=lr, schedule="constant")
  addon = LoraAddon(rank, alpha, ALL, dropout)
  addons = step_addons(lora=addon)
  groups = step_groups(addons)
  opt = build_optimizer(block, block.steps, groups)
  params = init_params(cfg, jax.random.key(0))
  state = init_state(params, opt, 0, groups=groups,
                     extra={"lora": init_adapters(cfg, rank, ALL, jax.random.key(5))})
  step = jax.jit(build_step(opt, lm_loss(cfg), groups=groups, addons=addons))
  return addon, params, state, step


@pytest.fixture(scope="module")
def trained():
  """One LoRA step function (with adapter dropout), its fresh state, and 3 steps on."""
  addon, params, state0, step = _lora_step(LLAMA, dropout=0.1, lr=3e-2)
  state = state0
  for i in range(3):
    state, m = step(state, _batch(i))
    assert np.isfinite(float(m["loss"])) and int(m["skipped"]) == 0
  return addon, params, state0, step, state


def test_step_0_loss_equals_the_plain_models_bitwise(trained):
  addon, params, state, step, _ = trained
  _, m = step(state, _batch())
  block = train_block(steps=10, warmup_steps=0, lr=1e-2, schedule="constant")
  opt = build_optimizer(block, 10)
  plain = jax.jit(build_step(opt, lm_loss(LLAMA)))
  _, m0 = plain(init_state(params, opt, 0), _batch())
  assert float(m["lm_loss"]) == float(m0["lm_loss"])


def test_training_moves_only_the_adapters_and_only_they_have_optimizer_state(trained):
  addon, params, _, _, state = trained
  host = jax.device_get(params)
  for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(state["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # frozen, bitwise
  assert [g.name for g in step_groups(step_addons(lora=addon))] == ["adapters"]  # no weights
  assert all(float(jnp.abs(v["b"]).max()) > 0 for v in state["lora"].values())  # B trained
  # The optimizer state: Adam's two moments of every adapter leaf, plus scalar counters;
  # nothing of the weights (their leaves are far larger than the adapters).
  opt_arrays = [(jax.tree_util.keystr(p), x) for p, x in
                jax.tree_util.tree_flatten_with_path(state["opt_state"])[0] if x.ndim > 0]
  assert opt_arrays and all("['lora']" in k and "['params']" not in k for k, _ in opt_arrays)
  n_ad = sum(x.size for x in jax.tree.leaves(state["lora"]))
  assert sum(x.size for _, x in opt_arrays) == 2 * n_ad
  assert n_ad < 0.3 * sum(x.size for x in jax.tree.leaves(params))


def test_the_merged_model_equals_the_unmerged_after_training(trained):
  addon, params, _, _, state = trained
  unmerged = _forward(LLAMA, state["params"], addon.eval_adapters(state))
  merged = _forward(LLAMA, addon.merged(LLAMA, state))
  np.testing.assert_allclose(merged, unmerged, atol=1e-5, rtol=0)
  assert np.abs(unmerged - _forward(LLAMA, params)).max() > 1e-3


def test_dropout_is_training_only_and_keyed_by_step(trained):
  """A new dropout mask per step (and micro-batch); evaluation adapters have none. (The
  training forward with dropout runs in the `trained` fixture.)"""
  addon, _, _, step, state = trained
  # The training forward draws them: the same state and batch at another step lose
  # differently (the fixture trains with dropout 0.1).
  _, m_a = step(state, _batch(7))
  _, m_b = step({**state, "step": state["step"] + 1}, _batch(7))
  assert float(m_a["lm_loss"]) != float(m_b["lm_loss"])
  key = jax.random.key(0)
  ad0, ad1 = addon.adapters(state, key, 0, 0), addon.adapters(state, key, 1, 0)
  layer = jax.tree.map(lambda x: x[0], state["lora"])
  x = jnp.ones((2, 5, LLAMA.hidden_size))
  delta = lambda ad: np.asarray(lora.layer_delta(layer, "q", x, ad.scale, ad.dropout, ad.rng))
  assert np.abs(delta(ad0) - delta(ad1)).max() > 0
  np.testing.assert_array_equal(delta(ad0), delta(addon.adapters(state, key, 0, 0)))
  ev = addon.eval_adapters(state)
  assert ev.rng is None and ev.dropout == 0.0
  full = np.asarray(lora.layer_delta(layer, "q", x, ev.scale))
  np.testing.assert_array_equal(delta(ev), full)
  # Inverted dropout: the mean over many masks is the undropped delta.
  many = np.mean([np.asarray(lora.layer_delta(layer, "q", x, ad0.scale, 0.5,
                                              jax.random.key(i))) for i in range(64)], axis=0)
  assert np.abs(many - full).max() < 0.5 * np.abs(full).max()


def test_rank_and_targets_are_checked_against_the_matrices():
  lora.validate(LLAMA, 7, ALL)   # k, v: 32 x 16 -> rank < 16
  with pytest.raises(JShearError, match=r"config.continued.lora.rank=16 must be below .* k is "
                                        r"32 x 16 \(rank < 16\)"):
    lora.validate(LLAMA, 16, ALL, "continued.lora")
  lora.validate(LLAMA, 20, ("q", "o", "gate", "up", "down"))  # 32 x 32 and 32 x 48
  assert lora.parse_targets("v, q") == ("q", "v")
  with pytest.raises(JShearError, match=r"unknown projection\(s\) \['lm_head'\]"):
    lora.parse_targets("q,lm_head")


