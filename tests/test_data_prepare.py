import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import gzip
import json
import shutil

import numpy as np
import pytest

from jshear.data import prepare as prep
from jshear.data import shards, sources
from jshear.data.mixture import MixtureLoader, domain_sources
from jshear.errors import JShearError

WORDS = "the quick brown fox jumps over a lazy dog while def return import class print".split()
SEQ = 16


def _tokenizer(path, words):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.train_from_iterator([" ".join(words)], trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<s>", "</s>"]))
  PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                          unk_token="<unk>").save_pretrained(str(path))
  return str(path)


def _doc(rng, n):
  return " ".join(rng.choice(WORDS, n))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """web: 6 .txt + 1 non-UTF-8 .txt; code: .jsonl (4 docs) + .jsonl.gz (3 docs)."""
  root = tmp_path_factory.mktemp("corpus")
  rng = np.random.default_rng(0)
  docs = {"web": [], "code": []}
  (root / "web" / "sub").mkdir(parents=True)
  for i in range(6):
    docs["web"].append(_doc(rng, 5 + 3 * i))
    (root / "web" / ("sub" if i % 2 else "") / f"p{i}.txt").write_text(docs["web"][-1])
  (root / "web" / "bad.txt").write_bytes(b"the quick \xff\xfe fox")
  (root / "web" / "notes.md").write_text("ignored: not a supported suffix")
  (root / "code").mkdir()
  lines = [json.dumps({"text": _doc(rng, 7 + i), "id": i}) for i in range(7)]
  (root / "code" / "a.jsonl").write_text("\n".join(lines[:4]) + "\n")
  with gzip.open(root / "code" / "b.jsonl.gz", "wt") as f:
    f.write("\n".join(lines[4:]))
  docs["code"] = [json.loads(x)["text"] for x in lines]
  tok = _tokenizer(root / "tok", WORDS)
  return {"root": root, "docs": docs, "tok": tok, "domains": {d: str(root / d) for d in docs}}


def _run(corpus, out, **kw):
  kw = {"seq_len": SEQ, "eval_docs": 1, "workers": 0, "progress": False, "shard_sequences": 2, **kw}
  return prep.prepare(corpus["tok"], corpus["domains"], str(out), **kw)


def _tree(out):
  """{relative path: bytes} of every file under out (shards, markers, manifest)."""
  return {os.path.relpath(os.path.join(d, n), out): open(os.path.join(d, n), "rb").read()
          for d, _, names in os.walk(out) for n in names}


def test_manifest_counts_and_shard_contents(corpus, tmp_path):
  m = _run(corpus, tmp_path / "out")
  tok = prep.load_tokenizer(corpus["tok"])
  assert m["tokenizer"]["vocab_size"] == len(tok) and m["seq_len"] == SEQ
  for d, texts in corpus["docs"].items():
    e = m["domains"][d]
    ids = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    assert e["train"]["docs"] + e["eval"]["docs"] == len(texts) and e["eval"]["docs"] == 1
    assert e["train"]["tokens"] + e["eval"]["tokens"] == sum(map(len, ids))
    for split in ("train", "eval"):
      src = domain_sources(str(tmp_path / "out"), split)[d]
      rows = np.stack([src[i] for i in range(len(src))])
      assert len(rows) == e[split]["sequences"] == -(-e[split]["tokens"] // SEQ)
      real = rows[:, 0][rows[:, 1] > 0]
      assert len(real) == e[split]["tokens"]
      # Every document appears whole and in order, starting with BOS.
      starts = np.flatnonzero(real == tok.bos_token_id)
      got = [real[s:t].tolist() for s, t in zip(starts, list(starts[1:]) + [len(real)])]
      assert all(g in ids for g in got) and len(got) == e[split]["docs"]
  assert m["domains"]["web"]["n_skipped"] == 1 and m["domains"]["web"]["skipped_files"] == ["bad.txt"]
  assert "notes.md" not in json.dumps(m["domains"]["web"]["files"])
  assert not os.path.exists(tmp_path / "out" / prep.WORK)
  # The prepared data feeds the mixture loader, tokenizer checked.
  mix = MixtureLoader(domain_sources(str(tmp_path / "out"), "train", corpus["tok"]), [0.5, 0.5], batch_size=4)
  assert mix.next_batch()["tokens"].shape == (4, SEQ)


def test_resume_after_kill_gives_identical_output(corpus, tmp_path, monkeypatch):
  _run(corpus, tmp_path / "clean")
  clean = _tree(tmp_path / "clean")
  real_tok, real_write = prep.tokenize_file, shards.write_shard

  def dies_after(n, fn, calls):
    def wrapped(*a):
      calls.append(a[0])
      if len(calls) > n:
        raise KeyboardInterrupt  # the "kill"
      return fn(*a)
    return wrapped

  first, second, writes = [], [], []
  monkeypatch.setattr(prep, "tokenize_file", dies_after(5, real_tok, first))
  with pytest.raises(KeyboardInterrupt):  # killed while tokenizing
    _run(corpus, tmp_path / "out")
  monkeypatch.setattr(prep, "tokenize_file", dies_after(99, real_tok, second))
  monkeypatch.setattr(shards, "write_shard", dies_after(3, real_write, writes))
  with pytest.raises(KeyboardInterrupt):  # killed while writing shards
    _run(corpus, tmp_path / "out")
  assert len(second) == 9 - 5  # 9 input files: the 5 tokenized before the kill are not redone
  monkeypatch.setattr(shards, "write_shard", real_write)
  with pytest.raises(JShearError, match="needs more than 7 documents"):  # a resume may fix pack settings
    _run(corpus, tmp_path / "out", eval_docs=7)
  _run(corpus, tmp_path / "out")
  assert len(second) == 9 - 5  # still nothing re-tokenized
  assert _tree(tmp_path / "out") == clean  # same shards, no duplicates or leftovers


def test_multiprocess_cli_matches_in_process(corpus, tmp_path):
  _run(corpus, tmp_path / "a")
  args = [f"--tokenizer={corpus['tok']}", f"--out={tmp_path / 'b'}", f"--seq_len={SEQ}", "--eval_docs=1",
          "--workers=2", "--shard_sequences=2"] + [f"--domain={d}={p}" for d, p in corpus["domains"].items()]
  assert prep.main(args) == 0
  assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_errors_name_the_problem(corpus, tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  with pytest.raises(JShearError, match="domain 'nothing'"):
    prep.prepare(corpus["tok"], {"nothing": str(tmp_path / "empty")}, str(tmp_path / "o1"), progress=False)
  (tmp_path / "j").mkdir()
  (tmp_path / "j" / "x.jsonl").write_text('{"text": "fox"}\n{"body": "dog"}\n')
  with pytest.raises(JShearError, match=r"x.jsonl:2: expected a string field 'text'"):
    prep.prepare(corpus["tok"], {"j": str(tmp_path / "j")}, str(tmp_path / "o2"), workers=0, progress=False)
  assert prep.main([f"--tokenizer={corpus['tok']}", f"--out={tmp_path / 'o3'}",
                    f"--domain=e={tmp_path / 'empty'}"]) == 2
  assert "domain 'e'" in capsys.readouterr().err


def test_eval_fraction_split_is_seeded_by_document(corpus, tmp_path):
  def split(seed, out):
    m = _run(corpus, tmp_path / out, eval_docs=None, eval_fraction=0.4, seed=seed)
    return {d: e["eval"]["docs"] for d, e in m["domains"].items()}
  assert split(0, "a") == split(0, "b") != split(5, "c")
  assert all(0 < n < len(corpus["docs"][d]) for d, n in split(0, "a").items())


def test_changed_input_under_a_finished_run_is_refused(corpus, tmp_path):
  web = tmp_path / "web"
  shutil.copytree(corpus["root"] / "web", web)
  run = lambda: prep.prepare(corpus["tok"], {"web": str(web)}, str(tmp_path / "out"), seq_len=SEQ,
                             workers=0, progress=False)
  run()
  (web / "p0.txt").write_text("the dog")
  with pytest.raises(JShearError, match="domain 'web' .file 'p0.txt'"):
    run()


def test_tokenizer_mismatch_is_refused(corpus, tmp_path):
  _run(corpus, tmp_path / "out")
  other = _tokenizer(tmp_path / "other", WORDS + ["extra"])
  assert prep.load_manifest(str(tmp_path / "out"), corpus["tok"])["format"] == prep.FORMAT
  with pytest.raises(JShearError, match="re-run jshear.data.prepare"):
    prep.load_manifest(str(tmp_path / "out"), other)
  with pytest.raises(JShearError, match="tokenizer"):
    domain_sources(str(tmp_path / "out"), "train", other)
  with pytest.raises(JShearError, match="different 'tokenizer'"):
    prep.prepare(other, corpus["domains"], str(tmp_path / "out"), seq_len=SEQ, eval_docs=1, workers=0,
                 progress=False, shard_sequences=2)


def test_parquet_source(tmp_path):
  path = str(tmp_path / "d.parquet")
  try:
    import pyarrow as pa
    import pyarrow.parquet as pq
  except ImportError:  # optional dependency: the error says how to get it
    open(path, "wb").close()
    with pytest.raises(JShearError, match="pip install pyarrow"):
      sources.read_documents(path)
    return
  pq.write_table(pa.table({"text": ["a b", "c"], "n": [1, 2]}), path)
  assert sources.read_documents(path)[0] == ["a b", "c"]
