"""Batched log-likelihood scoring: packed (prefix-shared) and padded layouts against a
brute-force forward, and the inference forward against the training forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jshear.eval import forward as F
from jshear.eval import scoring, testing
from jshear.model.masks import mask_shapes
from jshear.model.transformer import forward


def _brute(cfg, params, encoded, max_length, masks=None):
  """lm-eval's definition, one request at a time: inputs (ctx + cont)[-(max+1):][:-1]
  (right-padded to one length so it compiles once; causal: padding changes nothing)."""
  out = []
  fwd = jax.jit(lambda p, t, m: forward(p, t, m, cfg=cfg))
  for ctx, cont in encoded:
    seq = (list(ctx) + list(cont))[-(max_length + 1):]
    inp = np.zeros((1, max_length), np.int32)
    inp[0, :len(seq) - 1] = seq[:-1]
    logits = fwd(params, inp, masks)[0, :len(seq) - 1]
    lp = jax.nn.log_softmax(logits, -1)
    c = len(cont)
    pos = np.arange(len(seq) - 1 - c, len(seq) - 1)
    tg = np.asarray(seq[-c:])
    ll = float(np.asarray(lp)[pos, tg].sum())
    greedy = bool(np.all(np.asarray(jnp.argmax(logits, -1))[pos] == tg))
    out.append((ll, greedy))
  return out


def _requests(rng, n_docs=5, vocab=128):
  enc = []
  for d in range(n_docs):
    ctx = list(rng.integers(3, vocab, rng.integers(1, 12)))
    for _ in range(rng.integers(1, 4)):          # 1-3 choices sharing the context
      enc.append((ctx, list(rng.integers(3, vocab, rng.integers(1, 6)))))
  enc.append(([5] * 30, [7, 8, 9]))               # longer than max_length below: truncated
  return enc


def _random_masks(cfg, seed=0):
  rng = np.random.default_rng(seed)
  shapes = mask_shapes(cfg)
  m = {k: jnp.asarray((rng.random(shapes[k]) > 0.3) * rng.uniform(0.5, 1.0, shapes[k]), jnp.float32)
       for k in ("head", "intermediate", "hidden")}
  m["layer"] = jnp.asarray([1.0, 0.9], jnp.float32)
  return m


@pytest.mark.parametrize("family,with_masks", [("llama", False), ("llama", True), ("parallel", False)])
def test_packed_and_padded_match_bruteforce(family, with_masks):
  cfg = testing.tiny_cfg(family)
  params = testing.tiny_params(cfg)
  masks = _random_masks(cfg) if with_masks else None
  enc = _requests(np.random.default_rng(1))
  max_length = 24
  want = _brute(cfg, params, enc, max_length, masks)
  be = scoring.JaxBackend(cfg, params, masks, max_length=max_length)
  for layout in ("packed", "padded"):
    ll, greedy = scoring.score_requests(be, enc, tokens_per_batch=96, layout=layout, progress=False)
    np.testing.assert_allclose(ll, [w[0] for w in want], rtol=1e-5, atol=1e-4, err_msg=layout)
    assert greedy.tolist() == [w[1] for w in want], layout


def test_plan_covers_every_request_once_with_few_shapes():
  enc = _requests(np.random.default_rng(2), n_docs=40)
  for layout in ("packed", "padded"):
    seen = []
    shapes = set()
    for b in scoring.plan_batches(enc, 64, tokens_per_batch=128, layout=layout):
      req = b["slot_req"][b["slot_req"] >= 0]
      seen.extend(np.unique(req).tolist())
      # every target slot of a request sits in this batch
      shapes.add((b["tokens"].shape, b["idx"].shape))
      assert b["tokens"].dtype == np.int32
    assert sorted(seen) == list(range(len(enc))), layout
    assert len(shapes) <= 12, (layout, shapes)
  s = scoring.plan_summary(enc, 64, 128, "packed")
  assert 0 < s["fill"] <= 1


def test_encode_requests_moves_trailing_space_like_lm_eval():
  tok = testing.CharTokenizer()
  (ctx, cont), = scoring.encode_requests(tok, [("Answer: ", "yes")])
  assert ctx == [ord(c) for c in "Answer:"]
  assert cont == [ord(c) for c in " yes"]
  (ctx, cont), = scoring.encode_requests(tok, [("", "hi")], prefix_token_id=1)
  assert ctx == [1] and cont == [ord("h"), ord("i")]


@pytest.mark.parametrize("family", ["llama", "parallel"])
def test_inference_forward_matches_training_forward(family):
  cfg = testing.tiny_cfg(family)
  params = testing.tiny_params(cfg, seed=3)
  masks = _random_masks(cfg, 1) if family == "llama" else None
  rng = np.random.default_rng(0)
  toks = jnp.asarray(rng.integers(0, 128, (2, 12)), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(12, dtype=jnp.int32), (2, 12))
  causal = jnp.broadcast_to(jnp.tril(jnp.ones((12, 12), bool)), (2, 12, 12))
  h, _ = F.forward_cached(params, toks, pos, causal, cfg=cfg, masks=masks)
  np.testing.assert_allclose(F.lm_head(params, h, cfg=cfg, masks=masks),
                             forward(params, toks, masks, cfg=cfg), rtol=1e-5, atol=1e-5)
  # tree mask with one branch per document equals segment-id packing
  doc = jnp.asarray([[1] * 5 + [2] * 7, [1] * 12], jnp.int32)
  br = jnp.zeros_like(doc)
  pos2 = jnp.asarray([list(range(5)) + list(range(7)), list(range(12))], jnp.int32)
  h, _ = F.forward_cached(params, toks, pos2, F.tree_mask(doc, br), cfg=cfg, masks=masks)
  np.testing.assert_allclose(
      F.lm_head(params, h, cfg=cfg, masks=masks),
      forward(params, toks, masks, cfg=cfg, positions=pos2, segment_ids=doc), rtol=1e-5, atol=1e-5)
