"""Model building blocks with hand-written pieces: SwiGLU's custom backward."""

import jax
import jax.numpy as jnp
import numpy as np


def test_swiglu_gradient_matches_autodiff():
  from jshear.model.layers import swiglu
  g = jax.random.normal(jax.random.key(3), (4, 7)) * 3
  u = jax.random.normal(jax.random.key(4), (4, 7))
  w = jax.random.normal(jax.random.key(5), (4, 7))
  plain = lambda g, u: jnp.sum(jax.nn.silu(g) * u * w)
  ours = lambda g, u: jnp.sum(swiglu(g, u) * w)
  np.testing.assert_allclose(ours(g, u), plain(g, u), rtol=1e-6)
  for a, b in zip(jax.grad(ours, (0, 1))(g, u), jax.grad(plain, (0, 1))(g, u)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
