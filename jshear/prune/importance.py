"""One-shot activation importance (Minitron-style) and Block Importance for depth.

On N calibration sequences (the first N training rows of every domain, so deterministic):

  head          per query head: the L2 norm of its attention context (before the output
                projection) at each token
  kv            per KV group: the L2 norm of the contexts of all its query heads together
                (ranks groups; `head` then ranks heads inside the kept groups)
  intermediate  per MLP neuron: |hidden activation| (silu(gate) * up, before the down proj)
  hidden        per embedding channel: |norm output| of every RMSNorm/LayerNorm (per layer
                and the final one); each norm is aggregated on its own, then summed
  layer         Block Importance BI = 1 - mean over tokens of cos(h_in, h_out), h the
                residual stream before and after the block (ShortGPT's Block Influence)

Aggregation (the best in Minitron): mean over the sequence (valid tokens only; padding and
document boundaries don't count), then L2 over the batch: score = sqrt(sum_b mean_t(a)^2).

The instrumented forward below is the model's forward (same `jshear.model.layers` and
`attention` calls, both block families) that also returns these per-row statistics; a test
checks its logits equal `forward`'s. It runs unmasked, on the source model.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from jshear.atomic import atomic_write
from jshear.errors import JShearError
from jshear.model import layers as L
from jshear.model.config import ModelConfig
from jshear.model.transformer import block_fn, causal_attend, final_norm, output_logits

_log = logging.getLogger(__name__)
SCORE_GROUPS = ("layer", "head", "kv", "intermediate", "hidden")


def _seq_mean(x, w):
  """x [B, T, ...], w [B, T] -> [B, ...]: mean over valid tokens (0 for an empty row)."""
  w = w.astype(jnp.float32)
  wx = w.reshape(w.shape + (1,) * (x.ndim - 2))
  return jnp.sum(x.astype(jnp.float32) * wx, axis=1) / jnp.maximum(jnp.sum(w, 1), 1.0).reshape(
      (-1,) + (1,) * (x.ndim - 2))


def _head_stats(cfg, ctx, w):
  """ctx [B, T, H, Dh] -> per-row (head [B, H], kv [B, KV]) sequence means of L2 norms."""
  B, T, H, Dh = ctx.shape
  sq = jnp.sum(jnp.square(ctx.astype(jnp.float32)), axis=-1)            # [B, T, H]
  group = jnp.sum(sq.reshape(B, T, cfg.num_kv_heads, cfg.group_size), -1)
  return _seq_mean(jnp.sqrt(sq), w), _seq_mean(jnp.sqrt(group), w)


def _cos(a, b):
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  num = jnp.sum(a * b, -1)
  den = jnp.sqrt(jnp.sum(a * a, -1) * jnp.sum(b * b, -1))
  return num / jnp.maximum(den, 1e-12)


def instrumented_forward(params, tokens, *, cfg: ModelConfig, positions=None, segment_ids=None):
  """(logits [B, T, V] fp32, stats) with per-layer, per-row statistics:

    head [L, B, H], kv [L, B, KV], intermediate [L, B, I]: sequence means (see module doc)
    norms [L, B, n, D]: sequence mean of |output| of each of the block's n norms
    final_norm [B, D]: the same for the final norm
    cos [L, B, T]: cos(h_in, h_out) of every block at every token
  Valid tokens: segment_ids != 0 (all when segment_ids is None).
  """
  B, T = tokens.shape
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  w = jnp.ones((B, T), jnp.float32) if segment_ids is None else (segment_ids != 0)
  dtype = params["embed"].dtype
  x = jnp.take(params["embed"], tokens, axis=0)
  rope = L.rope_cos_sin(cfg, positions)
  block = block_fn(cfg)
  attend = causal_attend(cfg, segment_ids)

  def body(x, lp):
    out, aux, _ = block(cfg, x, lp, {}, None, rope, attend)
    out, ctx, act = out.astype(dtype), aux["ctx"], aux["act"]
    norms = jnp.stack([_seq_mean(jnp.abs(h), w) for h in aux["norms"]], 1)
    head, kv = _head_stats(cfg, ctx, w)
    stats = {"head": head, "kv": kv, "intermediate": _seq_mean(jnp.abs(act), w),
             "norms": norms, "cos": _cos(x, out)}
    return out, stats

  x, stats = jax.lax.scan(body, x, params["layers"])
  x = final_norm(x, params, cfg)
  stats["final_norm"] = _seq_mean(jnp.abs(x), w)
  return output_logits(x, params, cfg), stats


def batch_sums(stats, segment_ids=None):
  """Additive per-batch sums: squares of per-row means (for the L2 over the batch), and the
  sum and count of per-token cosines (for the mean in BI)."""
  sq = lambda a, axis: jnp.sum(jnp.square(a), axis=axis)
  cos = stats["cos"]
  w = (jnp.ones(cos.shape[1:], jnp.float32) if segment_ids is None
       else (segment_ids != 0).astype(jnp.float32))
  return {"head": sq(stats["head"], 1), "kv": sq(stats["kv"], 1),
          "intermediate": sq(stats["intermediate"], 1), "norms": sq(stats["norms"], 1),
          "final_norm": sq(stats["final_norm"], 0),
          "cos_sum": jnp.sum(cos * w[None], axis=(1, 2)), "count": jnp.sum(w)}


def scores_from_sums(sums: dict) -> dict:
  """Per-group scores (higher = more important) from accumulated `batch_sums`."""
  s = {k: np.asarray(v, np.float64) for k, v in sums.items()}
  hidden = np.sqrt(s["norms"]).sum(axis=(0, 1)) + np.sqrt(s["final_norm"])
  return {"head": np.sqrt(s["head"]), "kv": np.sqrt(s["kv"]),
          "intermediate": np.sqrt(s["intermediate"]), "hidden": hidden,
          "layer": 1.0 - s["cos_sum"] / max(float(s["count"]), 1.0)}


# ---- calibration data and the scoring run --------------------------------------------

def calibration_rows(data_dir: str, rows_per_domain: int) -> np.ndarray:
  """The first `rows_per_domain` training rows of every domain (sorted by name): [N, 2, T]."""
  from jshear.data.mixture import domain_sources
  if rows_per_domain <= 0:
    raise JShearError(f"prune.calib.rows must be positive, got {rows_per_domain}")
  sources = domain_sources(data_dir, "train")
  out = []
  for name in sorted(sources):
    src = sources[name]
    out.extend(np.asarray(src[i]) for i in range(min(len(src), rows_per_domain)))
  if not out:
    raise JShearError(f"no training rows in {data_dir} for calibration")
  return np.stack(out).astype(np.int32)


def make_scorer(cfg: ModelConfig, mesh=None):
  """scorer(params, rows [N, 2, T], batch_size) -> per-group scores, compiled once (iterative
  pruning re-scores many times). With a mesh, params are sharded like training (arrays that
  are already global stay where they are) and batches split over data x fsdp (the batch
  rounded up to a multiple of data x fsdp)."""
  from jshear.data.shards import positions_from_segments
  cfg = cfg.replace(remat="none")

  def fn(p, tok, seg, pos):
    _, stats = instrumented_forward(p, tok, cfg=cfg, positions=pos, segment_ids=seg)
    return batch_sums(stats, seg)

  if mesh is not None:
    from jshear import sharding as shd
    from jshear.model.params import abstract_params
    from jshear.model.state_sharding import param_shardings, put_global
    p_sh = param_shardings(cfg, abstract_params(cfg), mesh)
    b_sh = shd.batch_sharding(mesh)
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    put = lambda a: put_global(a, b_sh)
    jfn = jax.jit(fn, out_shardings=shd.replicated(mesh))
    host = shd.to_host
  else:
    dp, put, jfn, host = 1, jnp.asarray, jax.jit(fn), np.asarray

  def scorer(params, rows: np.ndarray, batch_size: int) -> dict:
    if batch_size <= 0:
      raise JShearError(f"prune.calib.batch must be positive, got {batch_size}")
    if mesh is not None and not isinstance(jax.tree.leaves(params)[0], jax.Array):
      params = put_global(jax.tree.map(lambda a: np.asarray(a, np.float32), params), p_sh)
    batch_size = -(-batch_size // dp) * dp
    n = -(-len(rows) // batch_size) * batch_size
    padded = np.zeros((n,) + rows.shape[1:], np.int32)
    padded[:len(rows)] = rows
    total = None
    for s in range(0, n, batch_size):
      tok, seg = padded[s:s + batch_size, 0], padded[s:s + batch_size, 1]
      out = jfn(params, put(tok), put(seg), put(positions_from_segments(seg)))
      out = {k: np.asarray(host(v), np.float64) for k, v in out.items()}
      total = out if total is None else {k: total[k] + out[k] for k in total}
    return scores_from_sums(total)

  return scorer


def compute_scores(cfg: ModelConfig, params, rows: np.ndarray, batch_size: int,
                   mesh=None) -> dict:
  """Scores of every group over calibration `rows` [N, 2, T] (tokens, segment ids), in
  batches of `batch_size` (the last one padded with empty rows, which count for nothing)."""
  if batch_size <= 0:
    raise JShearError(f"prune.calib.batch must be positive, got {batch_size}")
  return make_scorer(cfg, mesh)(params, rows, batch_size)


def cached_scores(path: str, cfg: ModelConfig, params, data_dir: str, rows_per_domain: int,
                  batch_size: int, mesh=None) -> dict:
  """`compute_scores` on the calibration rows, saved to `path` (npz) and reused from there
  when it was computed for the same calibration settings, model shape and weights."""
  from jshear.model_io import params_fingerprint
  meta = {"version": 2, "rows_per_domain": int(rows_per_domain), "data_dir": os.path.abspath(data_dir),
          "model": json.loads(cfg.replace(remat="none", attention_impl="xla").to_json()),
          "weights": params_fingerprint(params)}
  if os.path.exists(path):
    with np.load(path) as f:
      old = json.loads(str(f["meta"])) if "meta" in f.files else None
      if old == meta:
        _log.info("importance scores reused from %s", path)
        return {k: f[k] for k in SCORE_GROUPS}
    _log.info("%s was computed for other settings; recomputing", path)
  rows = calibration_rows(data_dir, rows_per_domain)
  _log.info("importance: scoring %d calibration rows", len(rows))
  scores = compute_scores(cfg, params, rows, batch_size, mesh)
  if jax.process_index() == 0:
    with atomic_write(path, "wb") as f:
      np.savez(f, meta=np.asarray(json.dumps(meta, sort_keys=True)),
               **{k: v for k, v in scores.items()})
  return scores
