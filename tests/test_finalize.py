"""Finalize: the dense sliced model computes exactly what the masked model computes."""

import jax
import numpy as np
import pytest
import transformers

from jshear.convert.hf_export import export_hf
from jshear.model.params import count_params
from jshear.model.transformer import forward
from jshear.prune.deterministic import deterministic_masks
from jshear.prune.expected import expected_params, prunable_params
from jshear.prune.finalize import finalize
from jshear.prune.state import init_prune_state
from jshear.prune.targets import TargetShape, target_config
from test_masks import TOKENS, tiny

CASES = {
    # family, source kv heads, target (layers, heads, kv, hidden, intermediate), groups
    "llama_gqa": ("llama", 3, (2, 4, 2, 32, 40), ("layer", "head", "kv", "intermediate", "hidden")),
    "llama_mha": ("llama", 6, (2, 4, 4, 32, 40), ("layer", "head", "intermediate", "hidden")),
    "parallel_gqa": ("parallel", 3, (2, 4, 2, 32, 40), ("layer", "kv", "intermediate", "hidden")),
    "parallel_mha": ("parallel", 6, (3, 4, 4, 48, 40), ("head", "intermediate")),
}


def _random_state(cfg, target, groups, seed):
  state = init_prune_state(cfg, target, groups, jax.random.key(seed))
  keys = jax.random.split(jax.random.key(seed + 1), len(state.log_alpha))
  la = {g: 3.0 * jax.random.normal(k, v.shape) for k, (g, v) in zip(keys, state.log_alpha.items())}
  return state.replace(log_alpha=la)


@pytest.mark.parametrize("case", sorted(CASES))
def test_finalized_logits_equal_masked_logits(case, tmp_path):
  family, kv, shape, groups = CASES[case]
  cfg, params = tiny(family, num_kv_heads=kv, tie_embeddings=False)
  target = TargetShape(*shape)
  state = _random_state(cfg, target, groups, 3)
  masks = deterministic_masks(state, cfg, target)  # soft kept values, exact target counts
  masked = np.asarray(forward(params, TOKENS, masks, cfg=cfg))
  new_cfg, new_params = finalize(cfg, params, masks)
  assert new_cfg == target_config(cfg, target)
  dense = np.asarray(forward(new_params, TOKENS, cfg=new_cfg))
  np.testing.assert_allclose(dense, masked, atol=1e-5, rtol=0)

  # The expected-size formula counts exactly the sliced model's prunable weights.
  binary = deterministic_masks(state, cfg, target, binary=True)
  assert int(round(float(expected_params(cfg, binary)))) == prunable_params(new_cfg)
  layer_w = sum(v.size for k, v in new_params["layers"].items() if "norm" not in k)
  assert layer_w == prunable_params(new_cfg)

  # The result exports to a plain HF model of the target shape.
  out = export_hf(new_cfg, new_params, str(tmp_path / "hf"))
  hf = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert hf.config.num_hidden_layers == shape[0] and hf.config.num_attention_heads == shape[1]
  assert hf.config.intermediate_size == shape[4] and hf.config.hidden_size == shape[3]
  assert sum(p.numel() for p in hf.parameters()) == count_params(new_params)


def test_tied_source_with_soft_hidden_unties_but_stays_exact():
  cfg, params = tiny("llama", tie_embeddings=True)
  target = TargetShape(3, 6, 3, 36, 64)
  masks = deterministic_masks(_random_state(cfg, target, ("hidden",), 5), cfg, target)
  new_cfg, new_params = finalize(cfg, params, masks)
  assert not new_cfg.tie_embeddings and "lm_head" in new_params
  np.testing.assert_allclose(np.asarray(forward(new_params, TOKENS, cfg=new_cfg)),
                             np.asarray(forward(params, TOKENS, masks, cfg=cfg)), atol=1e-5)
  binary = deterministic_masks(_random_state(cfg, target, ("hidden",), 5), cfg, target, binary=True)
  tied_cfg, tied = finalize(cfg, params, binary)
  assert tied_cfg.tie_embeddings and "lm_head" not in tied
