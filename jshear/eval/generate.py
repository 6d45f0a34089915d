"""Text generation with a KV cache: greedy or sampled (temperature, top-k, top-p).

  out = generate(params, cfg, [prompt_ids, ...], max_new_tokens=32)              # greedy
  out = generate(params, cfg, prompts, max_new_tokens=32, temperature=0.8, top_p=0.9,
                 rng=jax.random.key(0))
  python -m jshear.eval.generate --model=DIR --prompt "Once upon a time" [--max-new-tokens 64]

Prompts of a batch are left-padded to a common bucketed length P; the cache holds S =
P + max_new_tokens slots (rounded up), fixed for the whole call. One jitted function runs the
prefill (all prompt tokens at once) and then a `lax.while_loop` of one-token decode steps,
stopping early once every row has produced EOS. Positions count from each row's first real
token, and padding slots are masked out, so a padded row computes what it would alone.
Uses `jshear.eval.forward` (both block families, structural masks supported).
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Sequence

import numpy as np

from jshear.errors import JShearError

_PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def _round_up(n: int) -> int:
  for b in _PROMPT_BUCKETS:
    if b >= n:
      return b
  return -(-n // 1024) * 1024


def sample_logits(logits, rng, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0):
  """logits [B, V] fp32 -> token ids [B]. temperature 0 = greedy (argmax)."""
  import jax
  import jax.numpy as jnp
  if temperature <= 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  neg = jnp.finfo(logits.dtype).min
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, neg, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs     # mass of strictly more likely tokens
    drop_sorted = before >= top_p                    # always keeps the most likely token
    drop = jnp.zeros_like(drop_sorted).at[
        jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
    logits = jnp.where(drop, neg, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.lru_cache(maxsize=32)
def _generate_fn(cfg, B: int, P: int, S: int, max_new: int, temperature: float, top_k: int,
                 top_p: float, compute_dtype):
  import jax
  import jax.numpy as jnp
  from jshear.eval import forward as F

  def fn(params, masks, tokens, pad, rng, eos_id):
    cache_dtype = compute_dtype or params["embed"].dtype
    cache = F.init_cache(cfg, B, S, cache_dtype)
    slots = jnp.arange(S)
    valid_key = slots[None, :] >= pad[:, None]                        # [B, S]
    qpos = jnp.arange(P)
    positions = jnp.maximum(qpos[None, :] - pad[:, None], 0).astype(jnp.int32)
    mask = (slots[None, None, :] <= qpos[None, :, None]) & valid_key[:, None, :]
    h, cache = F.forward_cached(params, tokens, positions, mask, cfg=cfg, masks=masks, cache=cache,
                                cache_index=jnp.int32(0), compute_dtype=compute_dtype)
    logits = F.lm_head(params, h[:, -1], cfg=cfg, masks=masks, compute_dtype=compute_dtype)
    rng, sub = jax.random.split(rng)
    first = sample_logits(logits, sub, temperature, top_k, top_p)
    out = jnp.zeros((B, max_new), jnp.int32).at[:, 0].set(first)
    done = first == eos_id

    def cond(state):
      t, _, _, _, done, _ = state
      return (t < max_new) & ~jnp.all(done)

    def body(state):
      t, tok, cache, out, done, rng = state
      idx = P + t - 1                                  # cache slot of the token fed now
      pos = (idx - pad)[:, None].astype(jnp.int32)
      m = ((slots[None, :] <= idx) & valid_key)[:, None, :]
      h, cache = F.forward_cached(params, tok[:, None], pos, m, cfg=cfg, masks=masks, cache=cache,
                                  cache_index=idx, compute_dtype=compute_dtype)
      logits = F.lm_head(params, h[:, 0], cfg=cfg, masks=masks, compute_dtype=compute_dtype)
      rng, sub = jax.random.split(rng)
      nxt = sample_logits(logits, sub, temperature, top_k, top_p)
      nxt = jnp.where(done, eos_id, nxt)
      out = out.at[:, t].set(nxt)
      return t + 1, nxt, cache, out, done | (nxt == eos_id), rng

    t, _, _, out, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), first, cache, out, done, rng))
    return out, t

  return jax.jit(fn)


def generate(params, cfg, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 32,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, rng=None,
             eos_id: int | None = None, masks=None, max_len: int | None = None,
             compute_dtype=None) -> list[list[int]]:
  """New tokens for each prompt (EOS included when produced; nothing after it)."""
  import jax
  if not prompts:
    return []
  if max_new_tokens < 1:
    raise JShearError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
  if any(len(p) == 0 for p in prompts):
    raise JShearError("every prompt needs at least one token (prepend BOS to an empty prompt)")
  max_len = max_len or cfg.max_position_embeddings
  keep = max_len - max_new_tokens
  if keep < 1:
    raise JShearError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt in "
                      f"max_len={max_len}")
  prompts = [list(p)[-keep:] for p in prompts]                 # left-truncate long prompts
  B = len(prompts)
  P = min(_round_up(max(len(p) for p in prompts)), keep)
  S = P + _round_up(max_new_tokens)
  tokens = np.zeros((B, P), np.int32)
  pad = np.zeros((B,), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, P - len(p):] = p
    pad[i] = P - len(p)
  if temperature > 0 and rng is None:
    raise JShearError("sampling (temperature > 0) needs an rng key")
  rng = jax.random.key(0) if rng is None else rng
  eos = -1 if eos_id is None else int(eos_id)
  fn = _generate_fn(cfg, B, P, S, int(max_new_tokens), float(temperature), int(top_k),
                    float(top_p), compute_dtype)
  out, steps = jax.device_get(fn(params, masks, tokens, pad, rng, np.int32(eos)))
  result = []
  for row in np.asarray(out)[:, :int(steps)]:
    row = row.tolist()
    if eos_id is not None and eos in row:
      row = row[:row.index(eos) + 1]
    result.append(row)
  return result


def generate_text(loaded, prompts: Sequence[str], *, stop: Sequence[str] = (), **kw) -> list[str]:
  """String in, string out (the continuation only), cut at the first stop string."""
  tok = loaded.tokenizer
  ids = [tok(p, add_special_tokens=False)["input_ids"] or [tok.bos_token_id or tok.eos_token_id]
         for p in prompts]
  kw.setdefault("eos_id", tok.eos_token_id)
  outs = generate(loaded.params, loaded.cfg, ids, **kw)
  texts = []
  for o in outs:
    if kw["eos_id"] is not None and o and o[-1] == kw["eos_id"]:
      o = o[:-1]
    text = tok.decode(o, skip_special_tokens=False)
    for s in stop:
      if s and s in text:
        text = text[:text.index(s)]
    texts.append(text)
  return texts


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m jshear.eval.generate", description=__doc__.split("\n")[0])
  ap.add_argument("--model", required=True, help="jshear model dir or Hugging Face dir")
  ap.add_argument("--prompt", action="append", required=True)
  ap.add_argument("--max-new-tokens", type=int, default=64)
  ap.add_argument("--temperature", type=float, default=0.0)
  ap.add_argument("--top-k", type=int, default=0)
  ap.add_argument("--top-p", type=float, default=1.0)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  import jax
  from jshear.eval import loader
  try:
    m = loader.load(args.model)
    texts = generate_text(m, args.prompt, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          rng=jax.random.key(args.seed))
  except JShearError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2  # bad input (as every jshear CLI)
  for p, t in zip(args.prompt, texts):
    print(f"{p}{t}\n---")
  return 0


if __name__ == "__main__":
  sys.exit(main())
