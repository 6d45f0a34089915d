"""Next-token loss over packed batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jshear.model.transformer import forward


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


def row_nll(params, batch: dict, *, cfg, masks=None, compute_dtype=None, weights=None,
            adapters=None):
  """The one per-row scorer: per-sequence (NLL sum, scored-token count) of the (masked)
  model on a packed batch. `weights` [B, T] (or [B, T-1], per target) replace the default
  next-token weights (e.g. to score only a continuation). Every evaluation path (held-out
  loss, the in-loop domain eval, `eval ppl`) sums these. `adapters`: LoRA, unmerged."""
  logits = forward(params, batch["tokens"], masks, cfg=cfg, positions=batch.get("positions"),
                   segment_ids=batch.get("segment_ids"), compute_dtype=compute_dtype,
                   adapters=adapters)
  targets, default = token_targets(batch)
  if weights is None:
    weights = default
  elif weights.shape[1] == batch["tokens"].shape[1] - 1:  # per target: the last has none
    weights = jnp.pad(weights, ((0, 0), (0, 1)))
  return jnp.sum(token_nll(logits, targets) * weights, axis=1), jnp.sum(weights, axis=1)
