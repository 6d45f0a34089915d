"""Next-token loss over packed batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_targets(batch: dict):
  """(targets, weights), both [B, T]: position t predicts token t+1, only inside one document
  and never into padding (segment id 0). The last position has no target (weight 0); keeping
  all T positions spares the [B, T, V] slice of the logits and its padded gradient."""
  tokens = batch["tokens"]
  seg = batch.get("segment_ids")
  targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
  if seg is None:
    weights = jnp.ones(tokens[:, 1:].shape, jnp.float32)
  else:
    weights = ((seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)).astype(jnp.float32)
  return targets, jnp.pad(weights, ((0, 0), (0, 1)))


def token_nll(logits, targets):
  """-log softmax(logits)[target] per position. The label logit is picked by comparing with an
  iota, which XLA fuses into the reductions; a gather would make the backward a [B, T, V]
  scatter."""
  logits = logits.astype(jnp.float32)
  vocab = jax.lax.broadcasted_iota(targets.dtype, (1,) * targets.ndim + (logits.shape[-1],),
                                   targets.ndim)
  label = jnp.sum(jnp.where(vocab == targets[..., None], logits, 0.0), axis=-1)
  return jax.nn.logsumexp(logits, axis=-1) - label


def nll_sum(logits, batch: dict):
  """(sum of token NLL, number of predicted tokens). Logits [B, T, V] for all T positions."""
  targets, weights = token_targets(batch)
  return jnp.sum(token_nll(logits, targets) * weights), jnp.sum(weights)


def per_row_nll(logits, batch: dict):
  """Per-sequence (NLL sum, token count): for per-domain evaluation."""
  targets, weights = token_targets(batch)
  return jnp.sum(token_nll(logits, targets) * weights, axis=1), jnp.sum(weights, axis=1)
