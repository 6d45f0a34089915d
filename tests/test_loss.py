"""Next-token loss: the fused label pick equals optax's gather-based cross-entropy, and only
in-document, non-padding next tokens count."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jshear.model.loss import nll_sum, per_row_nll, token_nll, token_targets


def test_token_nll_matches_optax():
  logits = jax.random.normal(jax.random.key(0), (2, 5, 11)) * 3
  targets = jnp.array([[1, 0, 10, 4, 4], [7, 7, 2, 9, 3]])
  want = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  np.testing.assert_allclose(token_nll(logits, targets), want, rtol=1e-6, atol=1e-6)
  g = jax.grad(lambda x: jnp.sum(token_nll(x, targets)))(logits)
  g_want = jax.grad(lambda x: jnp.sum(
      optax.softmax_cross_entropy_with_integer_labels(x, targets)))(logits)
  np.testing.assert_allclose(g, g_want, rtol=1e-6, atol=1e-6)
  # The hand-written backward: per-position cotangents, and the logits' dtype kept.
  w = jax.random.uniform(jax.random.key(2), targets.shape)
  loss = lambda f, x: jnp.sum(f(x, targets) * w)
  g = jax.grad(lambda x: loss(token_nll, x))(logits)
  g_want = jax.grad(lambda x: loss(optax.softmax_cross_entropy_with_integer_labels, x))(logits)
  np.testing.assert_allclose(g, g_want, rtol=1e-6, atol=1e-6)
  gb = jax.grad(lambda x: loss(token_nll, x))(logits.astype(jnp.bfloat16))
  assert gb.dtype == jnp.bfloat16
  np.testing.assert_allclose(gb.astype(jnp.float32), g_want, rtol=0.05, atol=0.02)


def test_only_next_tokens_inside_a_document_count():
  tokens = jnp.array([[5, 6, 7, 8, 9, 0]])
  seg = jnp.array([[1, 1, 1, 2, 2, 0]])     # two documents, then padding
  batch = {"tokens": tokens, "segment_ids": seg}
  targets, w = token_targets(batch)
  np.testing.assert_array_equal(targets, [[6, 7, 8, 9, 0, 0]])
  np.testing.assert_array_equal(w, [[1, 1, 0, 1, 0, 0]])
  logits = jax.random.normal(jax.random.key(1), (1, 6, 12))
  total, n = nll_sum(logits, batch)
  lp = jax.nn.log_softmax(logits[0])
  want = -(lp[0, 6] + lp[1, 7] + lp[3, 9])
  np.testing.assert_allclose(total, want, rtol=1e-6)
  assert float(n) == 3.0
  rows, counts = per_row_nll(logits, batch)
  np.testing.assert_allclose(rows, [want], rtol=1e-6)
  np.testing.assert_array_equal(counts, [3.0])
