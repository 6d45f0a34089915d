"""Per-domain perplexity: sliding windows, packed batches, bits-per-byte, the CLI."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jshear import model_io
from jshear.eval import ppl, testing
from jshear.eval.__main__ import main as eval_main
from jshear.model.transformer import forward
from jshear.model.loss import per_row_nll


def test_sliding_windows_score_every_token_once_with_context():
  doc = list(range(10, 47))             # 37 tokens
  for max_len, stride, prefix in ((8, 4, None), (8, 7, 1), (8, 100, None), (16, 5, 1)):
    wins = ppl.sliding_windows(doc, max_len, stride, prefix)
    seq = ([prefix] if prefix is not None else []) + doc
    scored, ctx = [], []
    pos = 0
    for w, n in wins:
      assert len(w) <= max_len and 1 <= n <= len(w) - 1
      # the window ends where scoring ends: its last n tokens are new targets
      end = None
      for e in range(len(seq), 0, -1):
        if seq[e - len(w):e] == w.tolist():
          end = e
          break
      scored += list(range(end - n, end))
      ctx.append(end - n - (end - len(w)))
      pos = end
    assert scored == list(range(1, len(seq))), (max_len, stride)
    assert pos == len(seq)
    eff = min(stride, max_len - 1)
    assert all(c >= max_len - eff for c in ctx[1:])


def _doc_nll(cfg, params, doc, prefix=None):
  seq = ([prefix] if prefix is not None else []) + list(doc)
  logits = forward(params, jnp.asarray([seq[:-1]], jnp.int32), cfg=cfg)[0]
  lp = jax.nn.log_softmax(logits, -1)
  return -float(np.asarray(lp)[np.arange(len(seq) - 1), seq[1:]].sum()), len(seq) - 1


def test_evaluate_domains_documents_match_bruteforce():
  cfg = testing.tiny_cfg()
  params = testing.tiny_params(cfg)
  rng = np.random.default_rng(0)
  docs = {"a": [rng.integers(3, 128, n) for n in (5, 17, 9)], "b": [rng.integers(3, 128, 30)]}
  res = ppl.evaluate_domains(params, cfg, docs, max_len=32, prefix_token=1, batch_size=2,
                             num_bytes={"a": 100, "b": 50})
  for d, ds in docs.items():
    nll = sum(_doc_nll(cfg, params, x, 1)[0] for x in ds)
    n = sum(len(x) for x in ds)
    assert res[d]["tokens"] == n
    assert res[d]["loss"] == pytest.approx(nll / n, rel=1e-5)
    assert res[d]["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)
  assert res["a"]["bpb"] == pytest.approx(res["a"]["nll_sum"] / math.log(2) / 100)
  m = ppl.domain_metrics(res)
  assert set(m) == {"eval/a/loss", "eval/a/ppl", "eval/a/bpb", "eval/b/loss", "eval/b/ppl",
                    "eval/b/bpb", "eval/all/loss"}


def test_long_document_uses_windows_with_context():
  cfg = testing.tiny_cfg()
  params = testing.tiny_params(cfg)
  doc = np.random.default_rng(1).integers(3, 128, 40)
  res = ppl.evaluate_domains(params, cfg, {"d": [doc]}, max_len=16, stride=8)
  want = 0.0
  for w, n in ppl.sliding_windows(doc, 16, 8):
    logits = forward(params, jnp.asarray([w[:-1]]), cfg=cfg)[0]
    lp = np.asarray(jax.nn.log_softmax(logits, -1))
    want -= lp[np.arange(len(w) - 1 - n, len(w) - 1), w[len(w) - n:]].sum()
  assert res["d"]["tokens"] == 39
  assert res["d"]["nll_sum"] == pytest.approx(want, rel=1e-5)


def test_training_batches_match_per_row_nll():
  cfg = testing.tiny_cfg()
  params = testing.tiny_params(cfg)
  rng = np.random.default_rng(2)
  seg = np.array([[1] * 6 + [2] * 6 + [0] * 4, [1] * 16], np.int32)
  pos = np.array([list(range(6)) * 2 + [0] * 4, list(range(16))], np.int32)
  batch = {"tokens": rng.integers(3, 128, (2, 16)).astype(np.int32), "segment_ids": seg, "positions": pos}
  res = ppl.evaluate_domains(params, cfg, {"wiki": [batch, batch]})
  logits = forward(params, jnp.asarray(batch["tokens"]), cfg=cfg, positions=jnp.asarray(pos),
                   segment_ids=jnp.asarray(seg))
  s, c = per_row_nll(logits, {k: jnp.asarray(v) for k, v in batch.items()})
  assert res["wiki"]["tokens"] == 2 * int(c.sum()) == 2 * (5 + 5 + 15)
  assert res["wiki"]["loss"] == pytest.approx(float(s.sum() / c.sum()), rel=1e-5)


def test_cli_ppl(tmp_path, capsys):
  tok_dir = testing.train_tiny_tokenizer(str(tmp_path / "tok"))
  cfg = testing.tiny_cfg(vocab=320)
  path = model_io.save_model(str(tmp_path / "m"), cfg, testing.tiny_params(cfg), tokenizer_dir=tok_dir)
  (tmp_path / "wiki.txt").write_text("The quick brown fox jumps over the lazy dog. " * 20)
  d = tmp_path / "code"
  d.mkdir()
  (d / "a.py").write_text("def f(x):\n  return x + 1\n")
  (d / "b.py").write_text("print('hello')\n")
  out = tmp_path / "ppl.json"
  assert eval_main(["ppl", "--model", path, "--text", str(tmp_path / "wiki.txt"), str(d),
                    "--max-len", "64", "--out", str(out)]) == 0
  res = json.loads(out.read_text())["domains"]
  assert set(res) == {"wiki", "code"}
  for r in res.values():
    assert r["bpb"] > 0 and r["ppl"] > 1 and r["tokens"] > 0
  assert "wiki" in capsys.readouterr().out
  assert eval_main(["ppl", "--model", path, "--text", str(tmp_path / "missing.txt")]) == 2
