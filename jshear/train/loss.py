"""Next-token loss over packed batches."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def token_targets(batch: dict):
  """(inputs, targets, weights): predict token t+1 from t, only inside one document and never
  into padding (segment id 0)."""
  tokens = batch["tokens"]
  seg = batch.get("segment_ids")
  targets = tokens[:, 1:]
  if seg is None:
    weights = jnp.ones(targets.shape, jnp.float32)
  else:
    weights = ((seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)).astype(jnp.float32)
  return targets, weights


def nll_sum(logits, batch: dict):
  """(sum of token NLL, number of predicted tokens). Logits [B, T, V] for all T positions."""
  targets, weights = token_targets(batch)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], targets)
  return jnp.sum(nll * weights), jnp.sum(weights)


def per_row_nll(logits, batch: dict):
  """Per-sequence (NLL sum, token count): for per-domain evaluation."""
  targets, weights = token_targets(batch)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], targets)
  return jnp.sum(nll * weights, axis=1), jnp.sum(weights, axis=1)
