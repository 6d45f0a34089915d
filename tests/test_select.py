"""Perplexity-based data selection: scores of a reference model for every row or document
(the same bits on 1 and 8 devices, and after an interrupted run), the exact band of them a
view keeps, the view read like any prepared dir, and the refusals."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tiny_world
from jshear import sharding as shd
from jshear.data import prepare as prep
from jshear.data import score as score_mod
from jshear.data import select as sel
from jshear.data import view
from jshear.data import __main__ as data_cli
from jshear.data.mixture import MixtureLoader, domain_sources
from jshear.errors import JShearError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """The tiny world plus `docs`: its text cut into short documents, several to a row."""
  root = tmp_path_factory.mktemp("world")
  w = tiny_world.build(root)
  rng = np.random.default_rng(0)
  domains = {}
  for d in sorted(os.listdir(w["corpus"])):
    words = " ".join(open(os.path.join(w["corpus"], d, f)).read()
                     for f in sorted(os.listdir(os.path.join(w["corpus"], d)))).split()
    docs, i = [], 0
    while i < len(words) and len(docs) < 120:
      n = int(rng.integers(2, 14))
      docs.append(" ".join(words[i:i + n]))
      i += n
    os.makedirs(root / "short" / d)
    with open(root / "short" / d / "docs.jsonl", "w") as f:
      f.write("\n".join(json.dumps({"text": t}) for t in docs) + "\n")
    domains[d] = str(root / "short" / d)
  w["docs"] = str(root / "docs")
  prep.prepare(w["hf"], domains, w["docs"], seq_len=tiny_world.SEQ, eval_docs=4, workers=0,
               progress=False)
  return w


def _score(world, out, data=None, **kw):
  kw = {"batch_size": 4, "chunk_rows": 8, "progress": False, **kw}
  return score_mod.score(world["hf"], data or world["docs"], str(out), **kw)


def _cli(*args, devices=8):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", "jshear.data", *args], capture_output=True,
                        text=True, env=env, cwd=REPO, timeout=600)


def _in_process(capsys, *args):
  """`python -m jshear.data ARGS` in this process (its 8 fake devices): the same main() the
  module runs, without a second interpreter and JAX import."""
  capsys.readouterr()
  rc = data_cli.main(list(args))
  cap = capsys.readouterr()
  return subprocess.CompletedProcess(args, rc, cap.out, cap.err)


def _arrays(scores_dir):
  return score_mod.load_scores(str(scores_dir))[1]


def _same_arrays(a, b):
  assert sorted(a) == sorted(b)
  for d in a:
    assert sorted(a[d]) == sorted(b[d])
    for k in a[d]:
      assert a[d][k].dtype == b[d][k].dtype and a[d][k].tobytes() == b[d][k].tobytes(), (d, k)


# ---- the band ----------------------------------------------------------------------------

def _synthetic(rng, sizes=(37, 101, 64), ties=False):
  out = {}
  for i, n in enumerate(sizes):
    score = rng.normal(3 + i * 0.3, 1, n)
    if ties:
      score = np.round(score)
    score[rng.choice(n, 3, replace=False)] = np.nan   # units without a target
    out[f"d{i}"] = {"score": score, "row": np.arange(n), "segment": np.zeros(n, np.int64),
                    "tokens": np.full(n, 10.0)}
  return out


BAND_Q = {"low": lambda r: (0.0, r), "medium": lambda r: (0.5 - r / 2, 0.5 + r / 2),
          "high": lambda r: (1.0 - r, 1.0)}


def _check_band(scores, kept, band, rate):
  """Exactly floor(rate * n + 0.5) kept, a contiguous band of the sorted scores, within one
  position of numpy's quantiles at the band's ends."""
  s = scores[np.isfinite(scores)]
  k, n = int(np.floor(rate * len(s) + 0.5)), len(s)
  assert kept.sum() == k
  if k == 0:
    return
  x = np.sort(s)
  got = np.sort(scores[kept])
  lo_q, hi_q = BAND_Q[band](rate)
  lo = np.quantile(s, lo_q)
  hi = np.quantile(s, hi_q)
  below = x[x < lo]
  above = x[x > hi]
  assert got[0] >= (below[-1] if len(below) else x[0]), (band, rate, n)
  assert got[-1] <= (above[0] if len(above) else x[-1]), (band, rate, n)
  dropped = scores[np.isfinite(scores) & ~kept]
  assert not ((dropped > got[0]) & (dropped < got[-1])).any(), "the band has a hole"


@pytest.mark.parametrize("per_domain", [False, True])
def test_band_keeps_exactly_the_fraction_in_its_quantile_band(per_domain):
  rng = np.random.default_rng(1)
  for trial in range(20):
    arrays = _synthetic(rng, sizes=tuple(int(x) for x in rng.integers(1, 90, 3)))
    for band in sel.BANDS:
      for rate in (0.01, 0.1, 0.25, 1 / 3, 0.5, 0.77, 0.999, 1.0):
        keep = sel.choose(arrays, band, rate, per_domain)
        assert not any((keep[d] & ~np.isfinite(a["score"])).any() for d, a in arrays.items())
        if per_domain:
          for d, a in arrays.items():
            _check_band(a["score"], keep[d], band, rate)
        else:
          _check_band(np.concatenate([arrays[d]["score"] for d in sorted(arrays)]),
                      np.concatenate([keep[d] for d in sorted(arrays)]), band, rate)


def test_ties_fall_by_domain_then_row_and_runs_agree():
  rng = np.random.default_rng(2)
  arrays = _synthetic(rng, ties=True)
  for band in sel.BANDS:
    a, b = sel.choose(arrays, band, 0.3, False), sel.choose(arrays, band, 0.3, False)
    assert all(np.array_equal(a[d], b[d]) for d in a)
  flat = {d: dict(v, score=np.where(np.isfinite(v["score"]), 1.0, np.nan)) for d, v in arrays.items()}
  keep = sel.choose(flat, "low", 0.5, False)
  n = sum(int(np.isfinite(v["score"]).sum()) for v in flat.values())
  order = [(d, i) for d in sorted(flat) for i in range(len(flat[d]["score"]))
           if np.isfinite(flat[d]["score"][i])]
  want = set(order[:sel.keep_count(0.5, n)])
  assert {(d, int(i)) for d in keep for i in np.nonzero(keep[d])[0]} == want
  assert sel.keep_count(0.5, 5) == 3 and sel.keep_count(0.25, 10) == 3   # half up, not even


# ---- scoring -----------------------------------------------------------------------------

# One row a device: a global batch split over 8 devices instead (8 rows a forward on one
# device, 1 on each of 8) gives other bits (the break check of the per-device batch).
@pytest.mark.parametrize("unit,batch", [("row", 1), ("document", 3)])
def test_scores_are_the_same_bits_on_1_and_8_devices(world, tmp_path, unit, batch, capsys):
  import jax
  assert jax.device_count() == 8
  outs = []
  for n in (1, 8):
    out = tmp_path / f"s{n}"
    args = ("score", f"--model={world['hf']}", f"--data={world['docs']}", f"--out={out}",
            f"--unit={unit}", f"--batch_size={batch}", "--chunk_rows=6")
    r = _cli(*args, devices=1) if n == 1 else _in_process(capsys, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    outs.append(out)
  a, b = (_arrays(o) for o in outs)
  _same_arrays(a, b)
  ra, rb = (json.load(open(o / "scores.json")) for o in outs)
  assert ra == rb
  if unit == "document":
    assert max(len(np.unique(x["row"])) < len(x["row"]) for x in a.values()), \
        "expected rows holding several documents"


def test_document_scores_are_row_nll_restricted_to_one_segment(world):
  """Each piece's (NLL sum, targets) is row_nll with weights masking all but that segment;
  a row's pieces add up to its row score."""
  import jax
  from jshear.convert.hf_import import read_model
  from jshear.data.shards import positions_from_segments
  from jshear.model.loss import row_nll, token_targets
  cfg, params = read_model(world["hf"])
  src = domain_sources(world["docs"], "train")["code"]
  rows = np.stack([np.asarray(src[i]) for i in range(8)])
  mesh = shd.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  with jax.set_mesh(mesh):
    p = jax.device_put(params, shd.replicated(mesh))
    docs = score_mod.score_rows(rows, "document", cfg, p, mesh)
    whole = score_mod.score_rows(rows, "row", cfg, p, mesh)
  seg = rows[:, 1]
  b = {"tokens": rows[:, 0], "segment_ids": seg, "positions": positions_from_segments(seg)}
  _, w = token_targets(b)
  for r, s, nll, cnt in zip(docs["row"], docs["segment"], docs["nll"], docs["tokens"]):
    one = np.asarray(w) * (seg == s)
    want_nll, want_cnt = row_nll(params, b, cfg=cfg, weights=one)
    assert cnt == want_cnt[r]
    np.testing.assert_allclose(nll, want_nll[r], rtol=1e-6)
  for r in range(8):
    m = docs["row"] == r
    np.testing.assert_allclose(docs["nll"][m].sum(), whole["nll"][r], rtol=1e-5)
    assert docs["tokens"][m].sum() == whole["tokens"][r]


def test_an_interrupted_run_resumes_to_the_same_scores(world, tmp_path, monkeypatch):
  whole = _score(world, tmp_path / "whole", unit="document")
  save, calls = score_mod._save_chunk, []

  def dies_after_two(path, arrays):
    if len(calls) == 2:
      raise KeyboardInterrupt("killed")
    calls.append(path)
    save(path, arrays)

  monkeypatch.setattr(score_mod, "_save_chunk", dies_after_two)
  with pytest.raises(KeyboardInterrupt):
    _score(world, tmp_path / "cut", unit="document")
  monkeypatch.setattr(score_mod, "_save_chunk", save)
  chunks = sorted(f for f in os.listdir(tmp_path / "cut" / score_mod.CHUNKS) if f.endswith(".npz"))
  assert len(chunks) == 2 and not os.path.exists(tmp_path / "cut" / "scores.json")
  scored = []
  real = score_mod.score_chunk
  monkeypatch.setattr(score_mod, "score_chunk", lambda src, s, *a, **k: scored.append(s) or real(src, s, *a, **k))
  again = _score(world, tmp_path / "cut", unit="document")
  total = sum(-(-e["train"]["sequences"] // 8) for e in prep.load_manifest(world["docs"])["domains"].values())
  assert len(scored) == total - 2, "the finished chunks were scored again"
  assert again == whole
  _same_arrays(_arrays(tmp_path / "whole"), _arrays(tmp_path / "cut"))
  assert not os.path.exists(tmp_path / "cut" / score_mod.CHUNKS)
  with pytest.raises(JShearError, match="different 'unit'"):
    _score(world, tmp_path / "cut", unit="row")


# ---- the view ----------------------------------------------------------------------------

def test_row_view_serves_exactly_the_selected_rows(world, tmp_path):
  _score(world, tmp_path / "s", data=world["data"], unit="row")
  vm = sel.select(str(tmp_path / "s"), "high", 0.4, str(tmp_path / "v"), per_domain=True)
  assert vm["format"] == prep.FORMAT and vm["view"]["band"] == "high"
  assert vm["view"]["source"]["manifest"] == view.manifest_id(world["data"])
  arrays = _arrays(tmp_path / "s")
  src, got = domain_sources(world["data"], "train"), domain_sources(str(tmp_path / "v"), "train")
  for d, a in arrays.items():
    want = np.sort(a["row"][sel.choose(arrays, "high", 0.4, True)[d]])
    assert len(got[d]) == len(want) == sel.keep_count(0.4, len(a["score"]))
    for j, r in enumerate(want):
      np.testing.assert_array_equal(got[d][j], src[d][int(r)])
  for split in ("valid", "test", "eval"):
    a, b = domain_sources(world["data"], split), domain_sources(str(tmp_path / "v"), split)
    assert {d: len(x) for d, x in a.items()} == {d: len(x) for d, x in b.items()}
  kept = {d: {np.asarray(got[d][j]).tobytes() for j in range(len(got[d]))} for d in got}
  loader = MixtureLoader(got, {d: 1.0 for d in got}, batch_size=8, seed=3)
  for _ in range(5):
    b = loader.next_batch()
    for tok, seg, dom in zip(b["tokens"], b["segment_ids"], b["domain"]):
      assert np.stack([tok, seg]).astype(np.int32).tobytes() in kept[loader.domains[dom]]
  prep.load_manifest(str(tmp_path / "v"), world["hf"])   # the tokenizer check still applies
  assert os.path.isfile(tmp_path / "v" / "report" / "report.md")
  assert os.path.isfile(tmp_path / "v" / "report" / "scores.png")


def test_document_view_serves_only_the_selected_documents(world, tmp_path):
  _score(world, tmp_path / "s", unit="document")
  sel.select(str(tmp_path / "s"), "low", 0.5, str(tmp_path / "v"))
  arrays = _arrays(tmp_path / "s")
  keep = sel.choose(arrays, "low", 0.5, False)
  src, got = domain_sources(world["docs"], "train"), domain_sources(str(tmp_path / "v"), "train")
  cut = 0
  for d, a in arrays.items():
    pieces = {}
    for r, s in zip(a["row"][keep[d]], a["segment"][keep[d]]):
      pieces.setdefault(int(r), set()).add(int(s))
    assert len(got[d]) == len(pieces)
    for j, r in enumerate(sorted(pieces)):
      row, orig = np.asarray(got[d][j]), np.asarray(src[d][r])
      np.testing.assert_array_equal(row[0], orig[0])
      assert set(np.unique(row[1][row[1] > 0]).tolist()) == pieces[r]
      keep_tok = np.isin(orig[1], list(pieces[r]))
      np.testing.assert_array_equal(row[1], np.where(keep_tok, orig[1], 0))
      cut += int((orig[1] > 0).sum() - keep_tok.sum())
  assert cut > 0, "expected kept rows holding pieces that were not kept"
  assert sum(int(k.sum()) for k in keep.values()) == sel.keep_count(
      0.5, sum(int(np.isfinite(a["score"]).sum()) for a in arrays.values()))
  next(iter(MixtureLoader(got, {d: 1.0 for d in got}, batch_size=8)))
  # the token statistics of a view are those of the rows it serves (dropped pieces as padding)
  from jshear.data import entropy
  from jshear.data import stats as stats_mod
  vocab = prep.load_manifest(world["docs"])["tokenizer"]["vocab_size"]
  st = stats_mod.domain_stats(str(tmp_path / "v"))
  for d in got:
    rows = np.stack([np.asarray(got[d][j]) for j in range(len(got[d]))])
    assert st[d] == entropy.rows_stats([rows], vocab)


def test_select_is_the_same_on_every_run(world, tmp_path):
  _score(world, tmp_path / "s", unit="row")
  for out in ("a", "b"):
    sel.select(str(tmp_path / "s"), "medium", 0.3, str(tmp_path / out))
  for f in ("manifest.json", "report/report.md"):
    assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
  for f in os.listdir(tmp_path / "a" / "index"):
    a, b = np.load(tmp_path / "a" / "index" / f), np.load(tmp_path / "b" / "index" / f)
    assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_random_split_divides_every_domain(world, tmp_path):
  sel.random_split(world["data"], 0.5, str(tmp_path / "ref"), str(tmp_path / "rest"), seed=4)
  ref, rest = (domain_sources(str(tmp_path / p), "train") for p in ("ref", "rest"))
  for d, src in domain_sources(world["data"], "train").items():
    assert len(ref[d]) == sel.keep_count(0.5, len(src)) and len(ref[d]) + len(rest[d]) == len(src)
    assert not set(ref[d].rows.tolist()) & set(rest[d].rows.tolist())


def test_a_view_of_a_reprepared_source_is_refused(world, tmp_path):
  data = tmp_path / "data"
  shutil.copytree(world["data"], data)
  sel.random_split(str(data), 0.5, str(tmp_path / "v"))
  m = json.load(open(data / "manifest.json"))
  m["seed_note"] = "prepared again"
  json.dump(m, open(data / "manifest.json", "w"))
  with pytest.raises(JShearError, match="has changed since"):
    domain_sources(str(tmp_path / "v"), "train")


# ---- refusals ----------------------------------------------------------------------------

def _other_tokenizer_model(world, path):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  shutil.copytree(world["hf"], path)
  for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    if os.path.exists(path / f):
      os.remove(path / f)
  tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.train_from_iterator(["other words entirely"], trainers.WordLevelTrainer(
      special_tokens=["<pad>", "<unk>", "<s>", "</s>"]))
  PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                          unk_token="<unk>").save_pretrained(str(path))
  return str(path)


def _refused(r, out, words):
  assert r.returncode == 2, r.stderr[-2000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
  for w in words:
    assert w in lines[0], lines[0]
  assert not os.path.exists(out), f"{out} was written"


def test_refusals_are_one_line_exit_2_and_write_nothing(world, tmp_path, capsys):
  other = _other_tokenizer_model(world, tmp_path / "other")
  out = tmp_path / "never"

  def refused(words, *args):
    _refused(_in_process(capsys, *args, f"--out={out}"), out, words)

  refused(["tokenizer", "vocab_size"], "score", f"--model={other}", f"--data={world['data']}")
  refused(["--unit", "sentence"], "score", f"--model={world['hf']}", f"--data={world['data']}",
          "--unit=sentence")
  data = tmp_path / "data"
  shutil.copytree(world["data"], data)
  _score(world, tmp_path / "s", data=str(data), unit="row")
  scores = f"--scores={tmp_path / 's'}"
  for rate in ("0", "1.5", "-0.2", "nan"):
    refused(["--rate", "(0, 1]"], "select", scores, "--band=low", f"--rate={rate}")
  refused(["--band", "middle"], "select", scores, "--band=middle", "--rate=0.5")
  refused(["scores.json"], "select", f"--scores={tmp_path / 'nothing'}", "--band=low",
          "--rate=0.5")
  shutil.rmtree(data)   # prepared again, with another split: other rows under the same names
  domains = {d: os.path.join(world["corpus"], d) for d in sorted(os.listdir(world["corpus"]))}
  prep.prepare(world["hf"], domains, str(data), seq_len=tiny_world.SEQ, eval_docs=2,
               workers=0, progress=False)
  refused(["prepared again"], "select", scores, "--band=low", "--rate=0.5")
  # the process itself: the same line on stderr and exit code 2
  _refused(_cli("select", scores, "--band=low", "--rate=0.5", f"--out={out}"), out,
           ["prepared again"])


# ---- the reference model config ----------------------------------------------------------

def test_reference_config_trains_a_model_that_scores(world, tmp_path):
  from jshear import config_check
  sys.path.insert(0, REPO)
  from configs import reference_125m
  for shape in reference_125m.SHAPES:
    assert config_check.problems(reference_125m.get_config(shape)) == []
  from jshear.train.pipeline import run   # in this process: the config, not the CLI, is tested
  cfg = reference_125m.get_config("tiny")
  cfg.data.path, cfg.data.seq_len = world["data"], tiny_world.SEQ
  cfg.model.tokenizer, cfg.model.vocab_size, cfg.final_eval = world["hf"], 256, False
  run(cfg, str(tmp_path / "ref"))
  rec = score_mod.score(str(tmp_path / "ref" / "pretrained"), world["data"],
                        str(tmp_path / "s"), progress=False)
  assert rec["model"]["kind"] == "jshear"
  assert all(e["scored"] == e["units"] == e["rows"] for e in rec["domains"].values())
