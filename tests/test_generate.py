"""KV-cache generation equals greedy argmax of the training forward; sampling options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jshear.errors import JShearError
from jshear.eval import testing
from jshear.eval.generate import generate, sample_logits
from jshear.model.masks import mask_shapes
from jshear.model.transformer import forward


def _check_greedy(cfg, params, prompts, outs, masks=None):
  for p, o in zip(prompts, outs):
    seq = jnp.asarray([list(p) + list(o)], jnp.int32)
    am = np.asarray(jnp.argmax(forward(params, seq, masks, cfg=cfg)[0], -1))
    assert am[len(p) - 1:len(p) + len(o) - 1].tolist() == list(o)


@pytest.mark.parametrize("family", ["llama", "parallel"])
def test_greedy_matches_forward_argmax(family):
  cfg = testing.tiny_cfg(family)
  params = testing.tiny_params(cfg)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, 128, n).tolist() for n in (7, 3, 1, 20)]   # ragged: left padding
  outs = generate(params, cfg, prompts, max_new_tokens=10)
  assert [len(o) for o in outs] == [10] * 4
  _check_greedy(cfg, params, prompts, outs)
  # a row alone generates the same as inside the padded batch
  assert generate(params, cfg, prompts[1:2], max_new_tokens=10) == outs[1:2]


def test_greedy_with_structural_masks():
  cfg = testing.tiny_cfg()
  params = testing.tiny_params(cfg, seed=4)
  rng = np.random.default_rng(1)
  shapes = mask_shapes(cfg)
  masks = {k: jnp.asarray(rng.random(shapes[k]) > 0.3, jnp.float32) for k in ("head", "hidden", "intermediate")}
  prompts = [rng.integers(3, 128, 6).tolist()]
  outs = generate(params, cfg, prompts, max_new_tokens=8, masks=masks)
  _check_greedy(cfg, params, prompts, outs, masks)


def test_eos_stops_and_truncates():
  cfg = testing.tiny_cfg()
  params = testing.tiny_params(cfg)
  prompt = [5, 6, 7]
  full = generate(params, cfg, [prompt], max_new_tokens=12)[0]
  eos = full[3]
  out = generate(params, cfg, [prompt], max_new_tokens=12, eos_id=eos)[0]
  assert out == full[:full.index(eos) + 1]


def test_sampling_options():
  cfg = testing.tiny_cfg()
  params = testing.tiny_params(cfg)
  prompts = [[5, 6, 7], [9, 10]]
  greedy = generate(params, cfg, prompts, max_new_tokens=6)
  key = jax.random.key(3)
  assert generate(params, cfg, prompts, max_new_tokens=6, temperature=1.0, top_k=1, rng=key) == greedy
  assert generate(params, cfg, prompts, max_new_tokens=6, temperature=1.0, top_p=1e-6, rng=key) == greedy
  a = generate(params, cfg, prompts, max_new_tokens=6, temperature=1.5, rng=key)
  b = generate(params, cfg, prompts, max_new_tokens=6, temperature=1.5, rng=key)
  assert a == b
  with pytest.raises(JShearError, match="rng"):
    generate(params, cfg, prompts, max_new_tokens=4, temperature=0.7)
  with pytest.raises(JShearError, match="at least one token"):
    generate(params, cfg, [[]], max_new_tokens=4)


def test_top_p_keeps_the_nucleus():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  draws = {int(sample_logits(logits, jax.random.key(i), 1.0, 0, 0.75)[0]) for i in range(200)}
  assert draws == {0, 1}                  # 0.5 + 0.3 >= 0.75: tokens 2 and 3 never drawn
  draws = {int(sample_logits(logits, jax.random.key(i), 1.0, 3, 1.0)[0]) for i in range(200)}
  assert draws == {0, 1, 2}
