"""Per-domain token entropies (jshear/data/entropy.py) and the mixtures they imply: known
distributions, the hashing bound against exact counts, prepare's manifest record, the
`stats` command, and a stage's `domain_weights_from`."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from jshear.config_base import base_config
from jshear.config_check import problems
from jshear.data import entropy
from jshear.data import prepare as prep
from jshear.data import stats as stats_mod

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "alpha beta gamma delta eps zeta eta theta iota kappa lambda mu nu xi pi rho".split()


def _rows(stream, seq=64, doc_len=None):
  """A token stream packed as [n, 2, seq] rows; one document per row unless doc_len."""
  n = len(stream) // seq
  tok = np.asarray(stream[:n * seq], np.int32).reshape(n, seq)
  seg = np.ones_like(tok)
  if doc_len:
    seg = (np.arange(seq)[None, :] // doc_len + 1).repeat(n, 0).astype(np.int32)
  return np.stack([tok, seg], 1)


def _exact_conditional(rows):
  """H(X_t+1 | X_t) from exact pair counts (np.unique), independent of the counter."""
  tok, seg = rows[:, 0], rows[:, 1]
  same = (seg[:, :-1] == seg[:, 1:]) & (seg[:, :-1] > 0)
  x, y = tok[:, :-1][same].astype(np.int64), tok[:, 1:][same].astype(np.int64)
  _, joint = np.unique(x * 10**6 + y, return_counts=True)
  _, first = np.unique(x, return_counts=True)
  h = lambda c: math.log(c.sum()) - (c * np.log(c)).sum() / c.sum()
  return h(joint) - h(first)


def test_uniform_iid_stream_gives_ln_v_within_sampling_error():
  v, n = 32, 400_000
  rows = _rows(np.random.default_rng(0).integers(0, v, n))
  st = entropy.rows_stats([rows], v)
  # plug-in entropy is biased low by about (K - 1) / (2N) for K cells; sampling s.d. is far
  # smaller for a uniform law, so allow the bias plus a few thousandths
  assert not st["hashed"] and st["conditional_entropy_bound"] == 0.0
  assert abs(st["unigram_entropy"] - math.log(v)) < (v - 1) / (2 * n) + 2e-3
  pairs = st["pairs"]
  assert abs(st["conditional_entropy"] - math.log(v)) < (v * v - 1) / (2 * pairs) + 5e-3
  # the recorded bias estimate is Miller-Madow's, and adding it back lands on ln V
  assert st["plugin_bias_estimate"] == pytest.approx((v * v - v) / (2 * pairs), rel=1e-6)
  assert abs(st["conditional_entropy"] + st["plugin_bias_estimate"] - math.log(v)) < 1e-3
  assert st["tokens"] == len(rows) * 64


@pytest.mark.parametrize("buckets", [1 << 20, 1 << 10])  # exact counts; hashed (V^2 > M)
def test_a_deterministic_bigram_chain_has_conditional_entropy_zero(buckets):
  v = 300
  rng = np.random.default_rng(1)
  starts = rng.integers(0, v, 2000)
  stream = ((starts[:, None] * 7 + np.arange(64)[None, :] * 13) % v).ravel()  # x' = x + 13
  rows = _rows(stream)
  st = entropy.rows_stats([rows], v, buckets)
  assert st["hashed"] == (v * v > buckets)
  assert st["conditional_entropy"] == pytest.approx(0.0, abs=1e-9)
  assert st["unigram_entropy"] > 5.0  # the tokens themselves are far from constant


def _markov_rows(v=2000, n=300_000, seed=2):
  """A Zipf-ish first-order chain: each token's successor drawn from its own small law."""
  rng = np.random.default_rng(seed)
  succ = rng.integers(0, v, (v, 40))
  p = 1.0 / np.arange(1, 41)
  p /= p.sum()
  picks = rng.choice(40, n, p=p)
  out = np.empty(n, np.int64)
  out[0] = 0
  for t in range(1, n):
    out[t] = succ[out[t - 1], picks[t]]
  return _rows(out, doc_len=16)


def test_hashed_estimate_is_within_its_stated_bound_of_the_exact_one():
  rows = _markov_rows()
  exact = _exact_conditional(rows)
  for buckets in (1 << 14, 1 << 16, 1 << 18):
    st = entropy.rows_stats([rows], 2000, buckets)
    assert st["hashed"]
    err = exact - st["conditional_entropy"]
    assert -1e-9 <= err <= st["conditional_entropy_bound"], (buckets, err, st)
  # enough buckets: the estimate is close, and the bound says so
  st = entropy.rows_stats([rows], 2000, 1 << 22)
  assert st["conditional_entropy_bound"] < 0.02
  assert abs(exact - st["conditional_entropy"]) < 0.02


def test_counting_streams_the_same_whatever_the_chunks_and_no_pair_crosses_a_document():
  rows = _markov_rows(n=60_000)
  whole = entropy.rows_stats([rows], 2000, 1 << 16)
  pieces = entropy.rows_stats([rows[:7], rows[7:500], rows[500:]], 2000, 1 << 16)
  assert whole == pieces
  # 16-token documents in 64-token rows: 15 pairs a document
  assert whole["pairs"] == len(rows) * 4 * 15
  padded = rows.copy()
  padded[:, 1, -8:] = 0  # padding at the end of every row: its tokens count for nothing
  st = entropy.rows_stats([padded], 2000, 1 << 16)
  assert st["tokens"] == len(rows) * 56 and st["pairs"] == len(rows) * (3 * 15 + 7)


def test_entropy_weights():
  h = {"a": 1.0, "b": 3.0}
  assert entropy.entropy_weights(h, "entropy") == pytest.approx({"a": 0.25, "b": 0.75})
  soft = entropy.entropy_weights(h, "entropy_softmax", temperature=2.0)
  assert soft["b"] / soft["a"] == pytest.approx(math.e)  # exp((3 - 1) / 2)
  assert sum(soft.values()) == pytest.approx(1.0)
  with pytest.raises(ValueError):
    entropy.entropy_weights(h, "entropy_softmax", temperature=0.0)


def _tokenizer(path):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(
      special_tokens=["<pad>", "<unk>", "<s>", "</s>"]))
  PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                          pad_token="<pad>", unk_token="<unk>").save_pretrained(str(path))
  return str(path)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """Two domains: `chain` cycles through the words (low conditional entropy), `noise`
  draws them at random (high)."""
  root = tmp_path_factory.mktemp("ent")
  rng = np.random.default_rng(0)
  for name in ("chain", "noise"):
    (root / "corpus" / name).mkdir(parents=True)
    for i in range(12):
      if name == "chain":
        k = int(rng.integers(0, len(WORDS)))
        words = [WORDS[(k + j) % len(WORDS)] for j in range(200)]
      else:
        words = list(rng.choice(WORDS, 200))
      (root / "corpus" / name / f"d{i}.txt").write_text(" ".join(words))
  tok = _tokenizer(root / "tok")
  out = root / "prep"
  prep.prepare(tok, {n: str(root / "corpus" / n) for n in ("chain", "noise")}, str(out),
               seq_len=32, eval_docs=4, workers=0, progress=False)
  return str(out)


def test_prepare_records_the_statistics_and_stats_reads_them_or_counts_them(prepared, tmp_path):
  with open(os.path.join(prepared, "manifest.json")) as f:
    m = json.load(f)
  st = {d: e["stats"] for d, e in m["domains"].items()}
  assert st["chain"]["conditional_entropy"] < 0.1 < 2.0 < st["noise"]["conditional_entropy"]
  for d, e in m["domains"].items():  # counted on the training rows, and only them
    shards = [np.load(os.path.join(prepared, s["file"])) for s in e["train"]["shards"]]
    assert st[d] == entropy.rows_stats(shards, m["tokenizer"]["vocab_size"])
  assert stats_mod.domain_stats(prepared) == st
  # a dir prepared before the statistics existed: counted from its shards, then cached
  import shutil
  old = tmp_path / "old"
  shutil.copytree(prepared, old)
  for e in m["domains"].values():
    del e["stats"]
  (old / "manifest.json").write_text(json.dumps(m))
  assert stats_mod.domain_stats(str(old)) == st
  assert (old / stats_mod.CACHE).exists()
  assert stats_mod.domain_stats(str(old)) == st  # from the cache
  w = stats_mod.initial_weights(str(old), "entropy")
  assert w["noise"] > 0.9 and sum(w.values()) == pytest.approx(1.0)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "jshear.data", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def _in_process(capsys, *args):
  """The same main() `python -m jshear.data` runs, without a second interpreter."""
  from jshear.data import __main__ as data_cli
  capsys.readouterr()
  rc = data_cli.main(list(args))
  cap = capsys.readouterr()
  return subprocess.CompletedProcess(args, rc, cap.out, cap.err)


def test_stats_command_prints_the_table_and_refuses_bad_input(prepared, tmp_path, capsys):
  r = _cli("stats", prepared, "--json", "--temperature=0.5")   # the module as a process
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  assert out["domains"] == stats_mod.domain_stats(prepared)
  h = {d: s["conditional_entropy"] for d, s in out["domains"].items()}
  assert out["weights"]["entropy_softmax"] == pytest.approx(
      entropy.entropy_weights(h, "entropy_softmax", 0.5))
  table = _in_process(capsys, "stats", prepared)
  assert table.returncode == 0 and "| noise |" in table.stdout
  for bad in ([str(tmp_path / "nowhere")], [prepared, "--temperature=0"],
              [prepared, "--buckets=1000"]):
    r = _in_process(capsys, "stats", *bad)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1, r
  assert not (tmp_path / "nowhere").exists()
  assert _in_process(capsys, "nonsense").returncode == 2


def test_a_stage_takes_its_initial_weights_from_the_entropies(prepared):
  from jshear.train.loop import _initial_weights
  block = base_config().continued
  block.domain_weights_from = "entropy_softmax"
  block.domain_weights_temperature = 0.5
  want = stats_mod.initial_weights(prepared, "entropy_softmax", 0.5)
  assert _initial_weights(block, ["chain", "noise"], prepared) == want
  block.domain_weights_from = ""
  assert _initial_weights(block, ["chain", "noise"], prepared) == {"chain": 0.5, "noise": 0.5}


def test_weights_given_two_ways_or_an_unknown_mode_are_refused():
  c = base_config()
  c.continued.domain_weights_from = "entropy"
  assert not problems(c)
  c.continued.domain_weights = {"cc": 1.0}
  assert any("continued.domain_weights=" in p and "domain_weights_from" in p for p in problems(c))
  c = base_config()
  c.pretrain.domain_weights_from = "entropic"
  assert any("pretrain.domain_weights_from" in p for p in problems(c))
  c.pretrain.domain_weights_from = "entropy_softmax"
  c.pretrain.domain_weights_temperature = 0.0
  assert any("pretrain.domain_weights_temperature" in p for p in problems(c))
