"""Log-likelihood scoring of (context, continuation) requests, batched and length-bucketed.

One code path serves every model backend: requests are tokenized once (`encode_requests`,
lm-eval's convention), laid out into fixed-shape batches (`plan_batches`, see the layouts
below) at a few bucket lengths, so a jitted backend compiles once per (rows, length,
continuation width) shape. A backend maps one batch to per-slot target log-probs and
is-greedy flags, [B, C]; `score_requests` sums them per request. The LM head runs only on the
C scored positions per row, so [B, R, V] logits are never built.

  JaxBackend    jshear (tree-masked packed rows through `jshear.eval.forward`; padded rows
                through the training `forward`)
  TorchBackend  a transformers model on the same batches (parity checks and benchmarks)
"""

from __future__ import annotations

import bisect
import functools
import math
from typing import Sequence

import numpy as np

from jshear.errors import JShearError

BUCKETS = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
# Scored slots per batch (flat over its rows) are padded to one of these counts.
SLOT_BUCKETS = (16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


# ---- tokenization -------------------------------------------------------------------------

def _encode_texts(tokenizer, texts: list[str], add_special_tokens: bool | None = None) -> list[list[int]]:
  if not texts:
    return []
  kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
  out = tokenizer(texts, **kw)["input_ids"]
  return [list(x) for x in out]


def encode_requests(tokenizer, requests: Sequence[tuple[str, str]], prefix_token_id: int | None = None,
                    add_special_tokens: bool | None = None):
  """lm-eval's `_encode_pair`: trailing spaces of the context move to the continuation; the
  continuation tokens are those of tok(context + continuation) past len(tok(context)).
  An empty context becomes [prefix_token_id] (BOS, else EOS). Returns [(ctx_ids, cont_ids)].

  add_special_tokens=None uses the tokenizer's default, as lm-eval 0.4.13's HFLM does when
  add_bos_token is unset (a tokenizer that prepends BOS then conditions every context on
  it; SmolLM2's adds nothing). Older harness versions passed False."""
  ctxs, wholes = [], []
  for context, continuation in requests:
    n = len(context) - len(context.rstrip())
    if n:
      continuation = context[-n:] + continuation
      context = context[:-n]
    ctxs.append(context)
    wholes.append(context + continuation)
  uniq = sorted(set(ctxs) - {""})
  ctx_enc = dict(zip(uniq, _encode_texts(tokenizer, uniq, add_special_tokens)))
  whole_enc = _encode_texts(tokenizer, wholes, add_special_tokens)
  out = []
  for context, whole, (orig_ctx, orig_cont) in zip(ctxs, whole_enc, requests):
    if context == "":
      if prefix_token_id is None:
        raise JShearError("request with an empty context needs a BOS or EOS token to condition on")
      c, cont = [prefix_token_id], _encode_texts(tokenizer, [orig_ctx + orig_cont], False)[0]
    else:
      c = ctx_enc[context]
      cont = whole[len(c):]
    if not cont:
      raise JShearError(f"continuation {orig_cont!r} encodes to no tokens after context "
                        f"{orig_ctx[-40:]!r}")
    out.append((c, cont))
  return out


def prefix_token_id(tokenizer) -> int | None:
  for name in ("bos_token_id", "eos_token_id"):
    tid = getattr(tokenizer, name, None)
    if tid is not None:
      return int(tid)
  return None


# ---- batch layouts -----------------------------------------------------------------------
#
# A batch is a dict of fixed-shape int32 arrays
#   tokens, positions, doc_ids, branch_ids [B, R]   (doc id 0 = padding; branch 0 = context)
#   idx, targets [C]        flat positions (into B * R) whose next-token distribution scores
#                           each target token; C is bucketed (SLOT_BUCKETS)
# plus host-only `slot_req` [C]: which request each scored slot belongs to (-1 = none), and
# `layout`.
# "padded": one request per row, rows right-padded to a bucket length.
# "packed": the requests sharing one context (the choices of a document) become one item:
#   context once, then each continuation (minus its last token) as its own branch, which
#   attends to the context and to itself only; items are packed best-fit into rows.
# Both give each request exactly lm-eval's (ctx + cont)[-(max_length + 1):][:-1] inputs.

def _bucket(n: int, max_len: int) -> int:
  for b in BUCKETS:
    if b >= n:
      return min(b, max_len)
  return max_len


def _slot_count(n: int, cap: int) -> int:
  for w in SLOT_BUCKETS:
    if w >= n:
      return min(w, cap)
  return cap


def _truncate(ctx, cont, max_length):
  seq = (list(ctx) + list(cont))[-(max_length + 1):]
  c = min(len(cont), len(seq) - 1)
  return seq[:-1], seq[-c:], c


class _Item:
  """One context with its continuations; tokens laid out as [ctx | branch 1 | branch 2 ...]."""
  __slots__ = ("tokens", "positions", "branches", "idx", "targets", "reqs")

  def __init__(self, ctx, conts, req_ids):
    self.tokens, self.positions, self.branches = list(ctx), list(range(len(ctx))), [0] * len(ctx)
    self.idx, self.targets, self.reqs = [], [], []
    n = len(ctx)
    for b, (cont, r) in enumerate(zip(conts, req_ids), start=1):
      start = len(self.tokens)
      body = list(cont[:-1])
      self.tokens += body
      self.positions += list(range(n, n + len(body)))
      self.branches += [b] * len(body)
      # target j of this continuation is predicted at the previous token: the last context
      # token for j = 0, else the branch's own token j - 1
      self.idx += [n - 1] + list(range(start, start + len(body)))
      self.targets += list(cont)
      self.reqs += [r] * len(cont)

  def __len__(self):
    return len(self.tokens)


def _items(encoded, max_length: int, share: bool):
  """Group consecutive requests with identical context ids (the choices of one document)."""
  items, i = [], 0
  while i < len(encoded):
    j = i + 1
    if share:
      while j < len(encoded) and encoded[j][0] == encoded[i][0]:
        j += 1
    ctx = encoded[i][0]
    conts = [encoded[k][1] for k in range(i, j)]
    if share and len(ctx) > 0 and len(ctx) + sum(len(c) - 1 for c in conts) <= max_length \
        and all(len(c) >= 1 for c in conts):
      items.append(_Item(ctx, conts, list(range(i, j))))
    else:
      for k in range(i, j):
        inp, tgt, c = _truncate(encoded[k][0], encoded[k][1], max_length)
        items.append(_Item(inp[:len(inp) - c + 1], [tgt], [k]))
    i = j
  return items


def _emit(rows, R, B, layout):
  n_slots = sum(len(it.idx) for row in rows for it in row)
  C = _slot_count(n_slots, B * R)
  tokens = np.zeros((B, R), np.int32)
  positions = np.zeros((B, R), np.int32)
  doc_ids = np.zeros((B, R), np.int32)
  branch_ids = np.zeros((B, R), np.int32)
  idx = np.zeros((C,), np.int32)
  targets = np.zeros((C,), np.int32)
  slot_req = np.full((C,), -1, np.int64)
  c = 0
  for b, row in enumerate(rows):
    o = 0
    for d, it in enumerate(row, start=1):
      n, k = len(it), len(it.idx)
      tokens[b, o:o + n] = it.tokens
      positions[b, o:o + n] = it.positions
      doc_ids[b, o:o + n] = d
      branch_ids[b, o:o + n] = it.branches
      idx[c:c + k] = np.asarray(it.idx) + o + b * R      # flat index into [B * R]
      targets[c:c + k] = it.targets
      slot_req[c:c + k] = it.reqs
      o, c = o + n, c + k
  return {"tokens": tokens, "positions": positions, "doc_ids": doc_ids, "branch_ids": branch_ids,
          "idx": idx, "targets": targets, "slot_req": slot_req, "layout": layout}


def plan_batches(encoded: Sequence[tuple[list[int], list[int]]], max_length: int,
                 tokens_per_batch: int = 2048, layout: str = "packed", row_len: int = 256):
  """Yield fixed-shape batches (see above) covering every request once.

  padded: rows of bucket length L (B = tokens_per_batch // L), one request each.
  packed: rows of max(row_len, bucket(item)) tokens, items packed best-fit-decreasing."""
  if layout not in ("packed", "padded"):
    raise JShearError(f"layout must be 'packed' or 'padded', got {layout!r}")
  items = _items(encoded, max_length, share=layout == "packed")
  # Longest first (like lm-eval), so an out-of-memory shows up at once.
  items.sort(key=lambda it: -len(it))
  rows_by_len: dict[int, list[list]] = {}
  if layout == "padded":
    for it in items:
      rows_by_len.setdefault(_bucket(len(it), max_length), []).append([it])
  else:
    for R in sorted({max(min(row_len, max_length), _bucket(len(it), max_length)) for it in items},
                    reverse=True):
      group = [it for it in items if max(min(row_len, max_length), _bucket(len(it), max_length)) == R]
      # best fit, longest items first: the open row with the least room that still fits
      rows, free = [], []                   # free: sorted (room left, row index)
      for it in group:
        n = len(it)
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
          room, r = free.pop(k)
          rows[r].append(it)
        else:
          room, r = R, len(rows)
          rows.append([it])
        if room - n > 0:
          bisect.insort(free, (room - n, r))
      rows_by_len[R] = rows
  for R in sorted(rows_by_len, reverse=True):
    rows = rows_by_len[R]
    B = max(1, tokens_per_batch // R)
    for b0 in range(0, len(rows), B):
      chunk = rows[b0:b0 + B]
      # a short last batch gets the next power of two rows, not B (few extra compiles,
      # much less padding when a bucket holds only a handful of rows)
      yield _emit(chunk, R, min(B, 1 << (len(chunk) - 1).bit_length()), layout)


def score_requests(backend, encoded, *, tokens_per_batch: int = 2048, layout: str = "packed",
                   progress: bool = True, desc: str = "scoring"):
  """Summed log-likelihood and is-greedy of every request (in request order)."""
  n = len(encoded)
  ll = np.zeros(n, np.float64)
  greedy = np.ones(n, bool)
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=n, desc=desc, unit="req", dynamic_ncols=True)
  for batch in plan_batches(encoded, backend.max_length, tokens_per_batch, layout):
    lp, g = backend.score(batch)
    sel = batch["slot_req"] >= 0
    req = batch["slot_req"][sel]
    np.add.at(ll, req, np.asarray(lp, np.float64)[sel])
    np.logical_and.at(greedy, req, np.asarray(g, bool)[sel])
    if bar is not None:
      bar.update(len(np.unique(req)))
  if bar is not None:
    bar.close()
  return ll, greedy


# ---- backends -----------------------------------------------------------------------------

class JaxBackend:
  """Scores with jshear: packed batches through `jshear.eval.forward` (tree attention mask),
  padded ones through the training `forward` (causal + segment ids). Structural masks are
  supported; one jit per batch shape; params/masks are arguments (no recompiles when they
  change)."""

  def __init__(self, cfg, params, masks=None, *, compute_dtype=None, max_length: int | None = None):
    self.cfg, self.params, self.masks = cfg, params, masks
    self.max_length = int(max_length or cfg.max_position_embeddings)
    self._fn = _make_jax_score(cfg, compute_dtype)

  def score(self, batch):
    import jax
    args = {k: batch[k] for k in ("tokens", "positions", "doc_ids", "branch_ids", "idx", "targets")}
    lp, greedy = self._fn(self.params, self.masks, args, batch["layout"] == "packed")
    return jax.device_get(lp), jax.device_get(greedy)


@functools.lru_cache(maxsize=16)
def _make_jax_score(cfg, compute_dtype):
  import jax
  import jax.numpy as jnp
  from jshear.eval import forward as F
  from jshear.model.transformer import forward

  @functools.partial(jax.jit, static_argnums=(3,))
  def fn(params, masks, b, shared):
    if shared:
      h, _ = F.forward_cached(params, b["tokens"], b["positions"],
                              F.tree_mask(b["doc_ids"], b["branch_ids"]), cfg=cfg, masks=masks,
                              compute_dtype=compute_dtype)
    else:
      _, hiddens = forward(params, b["tokens"], masks, cfg=cfg, positions=b["positions"],
                           segment_ids=b["doc_ids"], compute_dtype=compute_dtype,
                           return_hidden=True)
      h = hiddens[-1]
    hg = jnp.take(h.reshape(-1, h.shape[-1]), b["idx"], axis=0)    # [C, D]
    logits = F.lm_head(params, hg, cfg=cfg, masks=masks, compute_dtype=compute_dtype)
    t = jnp.take_along_axis(logits, b["targets"][:, None], axis=-1)[:, 0]
    return t - jax.nn.logsumexp(logits, axis=-1), jnp.argmax(logits, axis=-1) == b["targets"]

  return fn


class TorchBackend:
  """Scores with a transformers causal LM (reference for parity checks and benchmarks).
  Packed batches pass the same tree mask as a 4-D boolean attention mask with position ids;
  the LM head runs only on the scored positions, as in `JaxBackend`."""

  def __init__(self, model, max_length: int | None = None):
    import torch
    self.torch, self.model = torch, model.eval()
    self.max_length = int(max_length or model.config.max_position_embeddings)

  def score(self, batch):
    torch = self.torch
    with torch.no_grad():
      t = torch.as_tensor(batch["tokens"], dtype=torch.long)
      pos = torch.as_tensor(batch["positions"], dtype=torch.long)
      doc = torch.as_tensor(batch["doc_ids"])
      br = torch.as_tensor(batch["branch_ids"])
      T = t.shape[1]
      causal = torch.arange(T)[None, :] <= torch.arange(T)[:, None]
      mask = causal[None] & (doc[:, :, None] == doc[:, None, :]) & \
          ((br[:, None, :] == 0) | (br[:, None, :] == br[:, :, None]))
      h = self.model.model(input_ids=t, position_ids=pos,
                           attention_mask=mask[:, None]).last_hidden_state
      i = torch.as_tensor(batch["idx"], dtype=torch.long)
      hg = h.reshape(-1, h.shape[-1])[i]
      logits = self.model.lm_head(hg).float()
      if getattr(self.model.config, "model_type", "") == "cohere":
        logits = logits * self.model.config.logit_scale
      tg = torch.as_tensor(batch["targets"], dtype=torch.long)
      t = torch.gather(logits, -1, tg[:, None])[:, 0]
      tok = t - torch.logsumexp(logits, dim=-1)
      return tok.double().numpy(), (logits.argmax(-1) == tg).numpy()


def plan_summary(encoded, max_length: int, tokens_per_batch: int = 2048, layout: str = "packed") -> dict:
  """Compiled shapes {(B, R, C): n_batches}, batch token slots, and the fraction that is
  real input (the rest is padding), for logging and benchmarks."""
  shapes: dict = {}
  slots = real = 0
  for b in plan_batches(encoded, max_length, tokens_per_batch, layout):
    key = (b["tokens"].shape[0], b["tokens"].shape[1], b["idx"].shape[0])
    shapes[key] = shapes.get(key, 0) + 1
    slots += b["tokens"].size
    real += int(np.sum(b["doc_ids"] > 0))
  return {"shapes": shapes, "slots": slots, "real_tokens": real,
          "fill": real / slots if slots else math.nan}
