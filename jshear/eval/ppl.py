"""Per-domain loss, perplexity and bits-per-byte, with sliding windows for long documents.

Library entry point (what training calls):

  results = evaluate_domains(params, cfg, {"wiki": batches, "github": docs, ...}, masks=masks)
  metrics = domain_metrics(results)      # {"eval/wiki/loss": ..., "eval/wiki/ppl": ..., ...}

A domain's value is either
  * an iterable of packed batches {"tokens": [B, T], "segment_ids", "positions"} (what
    `jshear.data.mixture.eval_batches` yields; segment id 0 = padding), scored like the train
    loss (next token inside one document), or
  * a list of 1-D token arrays (documents), each cut into sliding windows of `max_len` tokens
    that advance by `stride`: every token is scored once, with at least max_len - stride
    tokens of context once the document is longer than a window. Windows are packed into
    fixed [batch_size, max_len] rows (segment ids keep them apart), so one shape compiles.

Loss is the mean next-token NLL in nats; ppl = exp(loss); bits-per-byte = total NLL /
ln 2 / UTF-8 bytes of the scored text (needs `num_bytes`). With `prefix_token` (BOS) the
first token of each document is scored too; without it the first token is not scored but its
bytes still count, so bpb is then very slightly low.
"""

from __future__ import annotations

import functools
import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from jshear.errors import JShearError


@functools.lru_cache(maxsize=16)
def _eval_fn(cfg, compute_dtype=None):
  import jax
  import jax.numpy as jnp
  from jshear.model.loss import row_nll

  def fn(params, masks, tokens, positions, segment_ids, weights):
    batch = {"tokens": tokens, "positions": positions, "segment_ids": segment_ids}
    nll, cnt = row_nll(params, batch, cfg=cfg, masks=masks, compute_dtype=compute_dtype,
                       weights=weights)
    return jnp.sum(nll), jnp.sum(cnt)

  return jax.jit(fn)


def batch_nll(params, cfg, batch: Mapping, masks=None, compute_dtype=None, weights=None):
  """(NLL sum, scored-token count) of one packed batch, as device scalars."""
  from jshear.model.loss import token_targets
  tokens = batch["tokens"]
  if weights is None:
    _, weights = token_targets(batch)
  B, T = tokens.shape
  seg = batch.get("segment_ids")
  pos = batch.get("positions")
  if seg is None:
    seg = np.ones((B, T), np.int32)
  if pos is None:
    pos = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T))
  return _eval_fn(cfg, compute_dtype)(params, masks, tokens, pos, seg, weights)


# ---- sliding windows ----------------------------------------------------------------------

def sliding_windows(doc: Sequence[int], max_len: int, stride: int | None = None,
                    prefix_token: int | None = None) -> list[tuple[np.ndarray, int]]:
  """Cut one document into (window tokens, n_scored) pairs: each window is at most max_len
  tokens and scores its last n_scored next-token targets; together they score every token
  of the document (but the first, unless prefix_token is given) exactly once."""
  if max_len < 2:
    raise JShearError(f"max_len must be at least 2, got {max_len}")
  stride = max_len // 2 if stride is None else stride
  if stride < 1:
    raise JShearError(f"stride must be positive, got {stride}")
  stride = min(stride, max_len - 1)  # keep >= 1 token of context before the first scored one
  seq = np.asarray(([prefix_token] if prefix_token is not None else []) + list(doc), np.int32)
  n = len(seq)
  if n < 2:
    return []
  out = []
  done = 1                       # seq[1:done] are scored; seq[0] is never a target
  end = min(max_len, n)
  while True:
    start = max(0, end - max_len)
    out.append((seq[start:end], end - done))
    done = end
    if end >= n:
      return out
    end = min(done + stride, n)


def pack_windows(windows: Sequence[tuple[np.ndarray, int]], max_len: int, batch_size: int):
  """Pack windows (in order) into fixed [batch_size, max_len] batches with segment ids,
  restarting positions and per-target weights [B, max_len - 1]."""
  rows, cur, used = [], [], 0
  for w in windows:
    if used + len(w[0]) > max_len and cur:
      rows.append(cur)
      cur, used = [], 0
    cur.append(w)
    used += len(w[0])
  if cur:
    rows.append(cur)
  for b0 in range(0, len(rows), batch_size):
    tokens = np.zeros((batch_size, max_len), np.int32)
    seg = np.zeros((batch_size, max_len), np.int32)
    pos = np.zeros((batch_size, max_len), np.int32)
    weights = np.zeros((batch_size, max_len - 1), np.float32)
    for r, row in enumerate(rows[b0:b0 + batch_size]):
      o = 0
      for s, (toks, n_scored) in enumerate(row, start=1):
        L = len(toks)
        tokens[r, o:o + L] = toks
        seg[r, o:o + L] = s
        pos[r, o:o + L] = np.arange(L)
        # target at row position j + 1 is predicted from position j
        weights[r, o + L - 1 - n_scored:o + L - 1] = 1.0
        o += L
    yield {"tokens": tokens, "segment_ids": seg, "positions": pos}, weights


# ---- per-domain evaluation ----------------------------------------------------------------

def _is_documents(value) -> bool:
  return isinstance(value, (list, tuple)) and (not value or np.ndim(value[0]) == 1)


def evaluate_domains(params, cfg, domains: Mapping[str, Iterable], *, masks=None,
                     compute_dtype=None, num_bytes: Mapping[str, int] | None = None,
                     max_len: int = 2048, stride: int | None = None, batch_size: int = 4,
                     prefix_token: int | None = None, progress: bool = False) -> dict[str, dict]:
  """{domain: {"loss", "ppl", "tokens", ["bpb"]}} (see the module docstring)."""
  import jax
  out = {}
  for name, value in domains.items():
    nll, count = 0.0, 0.0
    if _is_documents(value):
      windows = [w for doc in value for w in sliding_windows(doc, max_len, stride, prefix_token)]
      it = pack_windows(windows, max_len, batch_size)
      if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"ppl {name}", unit="batch", dynamic_ncols=True)
      # with a progress bar, wait for each batch so the bar shows real progress
      sums = [jax.device_get(batch_nll(params, cfg, b, masks, compute_dtype, w)) if progress
              else batch_nll(params, cfg, b, masks, compute_dtype, w) for b, w in it]
    else:
      batches = [value] if isinstance(value, Mapping) else value
      sums = []
      for b in batches:
        if not isinstance(b, Mapping):
          b = {"tokens": np.asarray(b)}
        sums.append(batch_nll(params, cfg, b, masks, compute_dtype))
    for s, c in jax.device_get(sums):
      nll += float(s)
      count += float(c)
    if count == 0:
      raise JShearError(f"eval domain {name!r} has no tokens to score")
    loss = nll / count
    res = {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": int(count), "nll_sum": nll}
    if num_bytes and num_bytes.get(name):
      res["bpb"] = nll / math.log(2) / num_bytes[name]
      res["bytes"] = int(num_bytes[name])
    out[name] = res
  return out


def domain_metrics(results: Mapping[str, Mapping], prefix: str = "eval") -> dict[str, float]:
  """{"eval/<domain>/loss": ..., "eval/<domain>/ppl": ..., "eval/<domain>/bpb": ...} and the
  token-weighted "eval/all/loss"."""
  m = {}
  tot_nll = tot_tok = 0.0
  for d, r in results.items():
    for k in ("loss", "ppl", "bpb"):
      if k in r:
        m[f"{prefix}/{d}/{k}"] = float(r[k])
    tot_nll += r.get("nll_sum", r["loss"] * r["tokens"])
    tot_tok += r["tokens"]
  if len(results) > 1 and tot_tok:
    m[f"{prefix}/all/loss"] = tot_nll / tot_tok
  return m


def tokenize_documents(tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
  enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
  return [np.asarray(e, np.int32) for e in enc]
