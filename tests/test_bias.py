"""Pruning-induced bias metrics (jshear.eval.bias): CEV, SDE and PIEs on hand-made confusion
matrices and predictions, worked out by hand here; zero base rates both ways; the CLI on a
tiny model, and its refusal of a model with another vocabulary; bootstrap standard errors
(zero when nothing differs, shrinking with more documents, paired by seed); --each, one
source against each model."""

import json
import math

import numpy as np
import pytest

from jshear import model_io
from jshear.errors import JShearError
from jshear.eval import bias, testing
from jshear.eval.__main__ import main as eval_main

SQRT2 = math.sqrt(2)


def _points(src_cm, pruned_cms, **kw):
  return bias.bias_points(bias.from_confusion(src_cm), [bias.from_confusion(p) for p in pruned_cms], **kw)


# source: rows gold, columns predicted; 10 documents per class, 30 in all
SRC = [[8, 1, 1],
       [2, 6, 2],
       [1, 1, 8]]
# class 0: TP 8, FP 3, FN 2, TN 17 -> FPR 3/20 = 0.15, FNR 2/10 = 0.2
# class 1: TP 6, FP 2, FN 4, TN 18 -> FPR 2/20 = 0.10, FNR 4/10 = 0.4
# class 2: TP 8, FP 3, FN 2, TN 17 -> FPR 0.15, FNR 0.2
PRUNED = [[7, 2, 1],
          [2, 6, 2],
          [1, 2, 7]]
# class 0: TP 7, FP 3, FN 3, TN 17 -> FPR 0.15, FNR 0.3 -> (dFPR, dFNR) = (0, 50)
# class 1: TP 6, FP 4, FN 4, TN 16 -> FPR 0.20, FNR 0.4 -> (100, 0)
# class 2: like class 0                                 -> (0, 50)


def test_cev_and_sde_by_hand():
  r = _points(SRC, [PRUNED])
  np.testing.assert_allclose(r["fpr_source"], [0.15, 0.10, 0.15])
  np.testing.assert_allclose(r["fnr_source"], [0.2, 0.4, 0.2])
  np.testing.assert_allclose(r["dfpr"], [0, 100, 0], atol=1e-9)
  np.testing.assert_allclose(r["dfnr"], [50, 0, 50], atol=1e-9)
  # centroid (100/3, 100/3); Var dFPR = 10000/3 - 10000/9 = 20000/9,
  # Var dFNR = 5000/3 - 10000/9 = 5000/9; CEV = 25000/9 (the public code's: half of it)
  assert r["cev"] == pytest.approx(25000 / 9)
  # SDE = (|0-50| + |100-0| + |0-50|) / 3 / sqrt 2 = 200 / (3 sqrt 2)
  assert r["sde"] == pytest.approx(200 / (3 * SQRT2))
  assert r["status"] == ["ok"] * 3


def test_identical_predictions_give_zero():
  rng = np.random.default_rng(0)
  gold = rng.integers(0, 4, 50)
  pred = np.where(rng.random(50) < 0.6, gold, rng.integers(0, 4, 50))
  t = bias.task_bias(gold, pred, [pred.copy(), pred.copy()], [4] * 50)
  assert t["cev"] == 0 and t["sde"] == 0 and t["pies"] == []
  assert t["accuracy"]["pruned"] == [t["accuracy"]["source"]] * 2


def test_swapped_errors_same_accuracy_large_cev():
  # source: class 0 has FP 4, FN 2; class 1 FP 2, FN 4. The pruned model swaps them.
  gold = [0] * 10 + [1] * 10
  src = [0] * 8 + [1] * 2 + [0] * 4 + [1] * 6      # cm [[8, 2], [4, 6]]
  pruned = [0] * 6 + [1] * 4 + [0] * 2 + [1] * 8   # cm [[6, 4], [2, 8]]
  t = bias.task_bias(gold, src, [pruned], [2] * 20)
  assert t["accuracy"] == {"source": 0.7, "pruned": [0.7]}
  # class 0: FPR 4/10 -> 2/10 (-50 %), FNR 2/10 -> 4/10 (+100 %); class 1 the mirror image
  np.testing.assert_allclose(t["dfpr"], [-50, 100])
  np.testing.assert_allclose(t["dfnr"], [100, -50])
  # centroid (25, 25): each point is 75^2 + 75^2 = 11250 from it; SDE = 150 / sqrt 2
  assert t["cev"] == pytest.approx(11250)
  assert t["sde"] == pytest.approx(150 / SQRT2)


ZSRC = [[5, 0, 0],
        [1, 3, 1],
        [0, 1, 4]]
# class 0: TP 5, FP 1, FN 0, TN 9 -> FPR 0.1, FNR 0 (zero base rate)
# class 1: TP 3, FP 1, FN 2, TN 9 -> FPR 0.1, FNR 0.4
# class 2: TP 4, FP 1, FN 1, TN 9 -> FPR 0.1, FNR 0.2
ZPRUNED = [[4, 1, 0],
           [1, 3, 1],
           [0, 1, 4]]
# class 0: TP 4, FP 1, FN 1, TN 9; class 1: TP 3, FP 2, FN 2, TN 8 -> (100, 0);
# class 2: TP 4, FP 1, FN 1, TN 9 -> (0, 0)


def test_zero_base_rate_excluded():
  with np.errstate(all="raise"):           # no division by zero anywhere
    r = _points(ZSRC, [ZPRUNED], zero_rates="exclude")
  assert r["status"] == ["excluded", "ok", "ok"]
  assert r["reason"][0] == "source FNR = 0" and r["reason"][1] is None
  assert np.isnan(r["dfpr"][0]) and np.isnan(r["dfnr"][0])
  # points (100, 0), (0, 0): Var dFPR = 2500, Var dFNR = 0; SDE = (100 + 0) / 2 / sqrt 2
  assert r["cev"] == pytest.approx(2500)
  assert r["sde"] == pytest.approx(50 / SQRT2)


def test_zero_base_rate_smoothed():
  with np.errstate(all="raise"):
    r = _points(ZSRC, [ZPRUNED], zero_rates="smooth", alpha=0.5)
  assert r["status"] == ["smoothed", "ok", "ok"]
  # class 0, add-0.5 counts: FPR (1+.5)/(10+1) both -> 0; FNR (0+.5)/(5+1) = 1/12 ->
  # (1+.5)/6 = 1/4: +200 %. Classes 1 and 2 are not smoothed: (100, 0), (0, 0).
  np.testing.assert_allclose(r["fpr_source"][0], 1.5 / 11)
  np.testing.assert_allclose([r["dfpr"][0], r["dfnr"][0]], [0, 200], atol=1e-9)
  np.testing.assert_allclose(r["dfpr"][1:], [100, 0], atol=1e-9)
  # x = (0, 100, 0): Var 20000/9; y = (200, 0, 0): Var 40000/3 - 40000/9 = 80000/9
  assert r["cev"] == pytest.approx(100000 / 9)
  assert r["sde"] == pytest.approx((200 + 100 + 0) / 3 / SQRT2)


def test_undefined_rates_never_divide_by_zero():
  # SciQ's shape: the gold answer is always the last choice. Class 3 has no negatives,
  # classes 0-2 no positives: nothing is kept, and CEV/SDE say so with None.
  gold = [3] * 6
  src, pruned = [3, 3, 3, 0, 1, 3], [3, 0, 3, 0, 2, 2]
  with np.errstate(all="raise"):
    t = bias.task_bias(gold, src, [pruned], [4] * 6)
    s = bias.task_bias(gold, src, [pruned], [4] * 6, zero_rates="smooth")
  assert t["classes"] == [0, 1, 2, 3] and t["status"] == ["excluded"] * 4
  assert t["reason"] == ["no positives (FN+TP = 0)"] * 3 + ["no negatives (FP+TN = 0)"]
  assert t["cev"] is None and t["sde"] is None
  assert s["status"] == ["smoothed"] * 4 and math.isfinite(s["cev"]) and math.isfinite(s["sde"])
  # class 3 smoothed: FN 2 -> 4, so FNR (2+.5)/(6+1) -> (4+.5)/7: +80 %; FPR (0+.5)/(0+1)
  # for both models: 0
  assert s["dfnr"][3] == pytest.approx(80) and s["dfpr"][3] == pytest.approx(0)


def test_rates_averaged_over_trials():
  # trials PRUNED and the source itself: rates are the means, so every point is halved:
  # (0, 25), (50, 0), (0, 25); CEV scales by 1/4, SDE by 1/2
  r = _points(SRC, [PRUNED, SRC])
  np.testing.assert_allclose(r["fnr_pruned"], [0.25, 0.4, 0.25])
  np.testing.assert_allclose(r["dfpr"], [0, 50, 0], atol=1e-9)
  np.testing.assert_allclose(r["dfnr"], [25, 0, 25], atol=1e-9)
  assert r["cev"] == pytest.approx(25000 / 9 / 4)
  assert r["sde"] == pytest.approx(100 / (3 * SQRT2))
  assert len(r["fpr_trials"]) == 2


def test_pies_need_every_pruned_model_to_disagree():
  src = [0, 1, 2, 0, 1]
  a = [1, 1, 0, 0, 2]     # disagrees at 0, 2, 4
  b = [2, 1, 2, 1, 0]     # disagrees at 0, 3, 4 (at 0 with another answer than a's)
  assert bias.pies(src, [a, b]).tolist() == [0, 4]
  assert bias.pies(src, [a]).tolist() == [0, 2, 4]
  assert bias.pies(src, [src]).tolist() == []


def test_class_set_from_data_and_mismatched_totals():
  # a class that only a prediction uses still counts (a distractor position)
  t = bias.task_bias([0, 1, 0, 1], [0, 1, 0, 1], [[4, 1, 0, 1]], [5, 5, 5, 5])
  assert t["classes"] == [0, 1, 4] and t["reason"][2] == "no positives (FN+TP = 0)"
  assert t["choice_counts"] == {5: 4}
  with pytest.raises(JShearError, match="class totals"):
    _points(SRC, [[[9, 1, 1], [2, 6, 2], [1, 1, 8]]])


def test_category_classes_lie_on_the_diagonal():
  groups = ["a", "a", "b", "b", "b"]
  gold = [0, 1, 2, 3, 0]
  src = [0, 1, 2, 0, 0]        # a: no errors (FNR 0: excluded); b: 1 error of 3
  pruned = [0, 0, 1, 0, 0]     # b: 2 errors of 3
  t = bias.task_bias(gold, src, [pruned], [4] * 5, groups=groups)
  assert t["classes"] == ["a", "b"] and t["status"] == ["excluded", "ok"]
  # b: FNR 1/3 -> 2/3, FPR (errors per distractor) 1/9 -> 2/9: both +100 %
  np.testing.assert_allclose([t["dfpr"][1], t["dfnr"][1]], [100, 100])
  assert t["sde"] == pytest.approx(0, abs=1e-9)


def test_predict_rules():
  lls = [[-3.0, -9.0]]
  choices = [("ab", "abcdefgh")]       # per character: -1.5 vs -1.125
  assert bias.predict(lls, choices, "acc").tolist() == [0]
  assert bias.predict(lls, choices, "acc_norm").tolist() == [1]


# ---- the CLI on a tiny model --------------------------------------------------------------

ARC_ROWS = [{"id": f"q{i}", "question": f"Which is number {i}?",
             "choices": {"text": ["one", "two", "three", "four", "five"][:n],
                         "label": list("ABCDE")[:n]}, "answerKey": "ABCDE"[i % n]}
            for i, n in enumerate([4, 4, 3, 4, 5, 4, 4, 3, 4, 4])]


def _model(tmp_path, name, tok_dir, seed, **cfg):
  cfg = testing.tiny_cfg(vocab=320, **cfg)
  return model_io.save_model(str(tmp_path / name), cfg, testing.tiny_params(cfg, seed=seed),
                             tokenizer_dir=tok_dir)


def _arc_source(tmp_path, monkeypatch):
  """Fake eval sets (ARC_ROWS as arc_easy) in a private cache; a tokenizer and a source."""
  monkeypatch.setenv("JSHEAR_CACHE", str(tmp_path / "cache"))
  testing.make_fake_evalsets(str(tmp_path / "cache"),
                             dict(testing.FAKE_ROWS, **{"ai2_arc/ARC-Easy/validation": ARC_ROWS}))
  tok = testing.train_tiny_tokenizer(str(tmp_path / "tok"))
  return tok, _model(tmp_path, "src", tok, 0)


def test_cli_bias_end_to_end(tmp_path, monkeypatch, capsys):
  tok, src = _arc_source(tmp_path, monkeypatch)
  p1 = _model(tmp_path, "p1", tok, 1, num_layers=1)
  out = tmp_path / "bias"
  # the source as its own second trial: it never disagrees with itself, so no PIEs
  assert eval_main(["bias", "--source", src, "--pruned", f"{p1},{src}", "--tasks",
                    "arc_easy,copa", "--by_category", "copa", "--out", str(out)]) == 0
  cap = capsys.readouterr()
  assert cap.out.startswith("# Pruning-induced bias") and "|arc_easy|answer|10|" in cap.out
  assert sorted(p.name for p in out.iterdir()) == ["bias.json", "bias.md", "bias.png"]
  assert (out / "bias.md").read_text() == cap.out
  res = json.loads((out / "bias.json").read_text())
  arc = res["tasks"]["arc_easy"]
  assert arc["n"] == 10 and arc["choice_counts"] == {"3": 2, "4": 7, "5": 1}
  assert set(arc["classes"]) >= {0, 1, 2, 3}
  assert arc["pies"] == [] and arc["accuracy"]["pruned"][1] == arc["accuracy"]["source"]
  assert len(arc["status"]) == len(arc["classes"]) == len(arc["dfpr"])
  assert res["tasks"]["copa"]["class_by"] == "category"
  assert res["tasks"]["copa"]["classes"] == ["cause"]
  # an existing --out is refused before any scoring
  assert eval_main(["bias", "--source", src, "--pruned", p1, "--tasks", "arc_easy",
                    "--out", str(out)]) == 2
  assert "--overwrite" in capsys.readouterr().err


def test_cli_bias_refuses_another_vocabulary(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("JSHEAR_CACHE", str(tmp_path / "cache"))
  testing.make_fake_evalsets(str(tmp_path / "cache"))
  src = _model(tmp_path, "src", testing.train_tiny_tokenizer(str(tmp_path / "tok")), 0)
  other = _model(tmp_path, "other", testing.train_tiny_tokenizer(str(tmp_path / "tok2"), 280), 0)
  out = tmp_path / "bias"
  assert eval_main(["bias", "--source", src, "--pruned", other, "--tasks", "arc_easy",
                    "--out", str(out)]) == 2
  cap = capsys.readouterr()
  lines = cap.err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: --pruned ") and "vocab" in lines[0]
  assert cap.out == "" and not out.exists()
  assert not list(tmp_path.glob(".bias*"))           # no temporary left either
  assert eval_main(["bias", "--source", src, "--pruned", src, "--tasks", "lambada"]) == 2
  assert "not multiple-choice" in capsys.readouterr().err
  # refused before any model is scored
  monkeypatch.setattr(bias, "score_model", lambda *a, **k: pytest.fail("scored"))
  assert eval_main(["bias", "--source", src, "--pruned", src, "--tasks", "arc_easy",
                    "--bootstrap", "1"]) == 2
  assert "--bootstrap: 0 (none) or at least 2 resamples, got 1" in capsys.readouterr().err


def test_compare_columns_from_cached_predictions(tmp_path):
  """jshear.experiments.compare: CEV/SDE of each method's cached zero-shot predictions
  against the source's, and their column in compare.md."""
  from jshear.atomic import write_json
  from jshear.experiments import compare
  gold = [0] * 10 + [1] * 10
  doc = lambda pred: {"arc_easy": {"gold": gold, "n_choices": [2] * 20, "pred": pred}}
  write_json(tmp_path / "src.json", {"docs": doc([0] * 8 + [1] * 2 + [0] * 4 + [1] * 6)})
  write_json(tmp_path / "m.json", {"docs": doc([0] * 6 + [1] * 4 + [0] * 2 + [1] * 8)})
  write_json(tmp_path / "old.json", {"acc": {}})      # a cache from before predictions
  b = compare.zero_shot_bias(str(tmp_path / "m.json"), str(tmp_path / "src.json"))
  # the swapped-errors case above: CEV 11250, SDE 150 / sqrt 2; documents 6, 7, 12, 13
  # changed answer
  assert b["arc_easy"]["cev"] == pytest.approx(11250)
  assert b["arc_easy"]["sde"] == pytest.approx(150 / SQRT2) and b["arc_easy"]["pies"] == 4
  assert compare.zero_shot_bias(str(tmp_path / "old.json"), str(tmp_path / "src.json")) is None
  method = {"params": 10, "eval": {"d": 1.0}, "mean_loss": 1.0, "heldout": None,
            "zero_shot": {"arc_easy": 0.7, "mean": 0.7}, "prune_tokens": 0, "total_tokens": 0,
            "wall_s": 1.0}
  res = {"methods": {"m": dict(method, bias=b), "n": dict(method, bias=None)},
         "target": {}, "continue_tokens": 0,
         "source": {"params": 20, "eval": {"d": 0.9}, "mean_loss": 0.9, "zero_shot": None}}
  lines = compare.to_markdown(res).splitlines()
  assert "| arc_easy CEV / SDE |" in lines[4]
  assert " 11250.0 / 106.07 |" in lines[7] and " - / - |" in lines[8]
  assert len({l.count("|") for l in lines[4:9]}) == 1     # every row has every column


def test_compare_zero_shot_caches_predictions(tmp_path, monkeypatch):
  """The cached predictions follow each task's reported metric (piqa: acc_norm, arc_easy:
  acc): their accuracy is the one compare reports."""
  from jshear.experiments import compare
  monkeypatch.setenv("JSHEAR_CACHE", str(tmp_path / "cache"))
  testing.make_fake_evalsets(str(tmp_path / "cache"),
                             dict(testing.FAKE_ROWS, **{"ai2_arc/ARC-Easy/validation": ARC_ROWS}))
  src = _model(tmp_path, "src", testing.train_tiny_tokenizer(str(tmp_path / "tok")), 0)
  acc = compare.zero_shot(src, str(tmp_path / "zs.json"), "piqa,arc_easy", 0)
  docs = json.loads((tmp_path / "zs.json").read_text())["docs"]
  for task in ("piqa", "arc_easy"):
    d = docs[task]
    assert np.mean(np.equal(d["pred"], d["gold"])) == pytest.approx(acc[task])
  assert len(docs["arc_easy"]["pred"]) == 10
  b = compare.zero_shot_bias(str(tmp_path / "zs.json"), str(tmp_path / "zs.json"))
  assert all(v["pies"] == 0 and v["sde"] in (0, None) for v in b.values())


def _noisy(seed, n=120, k=4, keep=0.6):
  rng = np.random.default_rng(seed)
  gold = rng.integers(0, k, n)
  src = np.where(rng.random(n) < 0.7, gold, rng.integers(0, k, n))
  pruned = np.where(rng.random(n) < keep, src, rng.integers(0, k, n))
  return gold, src, pruned


def test_bootstrap_se_zero_for_identical_and_shrinks_with_documents():
  gold, src, pruned = _noisy(0, n=400)
  same = bias.bootstrap(gold, src, [src.copy()], [4] * len(gold), draws=50, seed=1)
  assert same["usable"] == 50 and same["cev_se"] == 0 and same["sde_se"] == 0
  one = bias.bootstrap(gold, src, [pruned], [4] * len(gold), draws=300, seed=1)
  assert one["cev_se"] > 0 and one["sde_se"] > 0
  # the same documents nine times over: the point estimate is unchanged, the s.e. ~1/3
  rep = lambda a: np.tile(a, 9)
  nine = bias.bootstrap(rep(gold), rep(src), [rep(pruned)], [4] * 9 * len(gold), draws=300,
                        seed=1)
  assert 0.22 < nine["sde_se"] / one["sde_se"] < 0.45
  # CEV's resamples are skewed at this size (small base rates in the denominators): it
  # shrinks faster than 1/sqrt(9), so only the direction is asserted
  assert nine["cev_se"] < 0.45 * one["cev_se"]
  lo, hi = one["cev_90"]
  assert lo < hi and lo <= np.median(one["cev_draws"]) <= hi
  t1 = bias.task_bias(gold, src, [pruned], [4] * len(gold))
  t9 = bias.task_bias(rep(gold), rep(src), [rep(pruned)], [4] * 9 * len(gold), draws=20)
  assert t9["cev"] == pytest.approx(t1["cev"]) and t9["sde"] == pytest.approx(t1["sde"])
  assert t1["bootstrap"] is None and t9["bootstrap"]["draws"] == 20


def test_bootstrap_same_seed_same_resamples_for_every_model():
  gold, src, pruned = _noisy(2)
  _, _, other = _noisy(3)
  n = [4] * len(gold)
  a = bias.bootstrap(gold, src, [pruned], n, draws=30, seed=5)
  b = bias.bootstrap(gold, src, [pruned], n, draws=30, seed=5)
  np.testing.assert_array_equal(a["cev_draws"], b["cev_draws"])
  c = bias.bootstrap(gold, src, [pruned], n, draws=30, seed=6)
  assert not np.array_equal(a["cev_draws"], c["cev_draws"])
  # pairing: the same resample indices for another model -> its draws match its own
  # bias_points on those documents
  rng = np.random.default_rng(5)
  d = rng.integers(0, len(gold), len(gold))
  count = bias._counter(gold, src, [other], n, None)
  r = bias.bias_points(count(src, d), [count(other, d)])
  o = bias.bootstrap(gold, src, [other], n, draws=30, seed=5)
  assert o["cev_draws"][0] == pytest.approx(r["cev"])
  with pytest.raises(JShearError, match="at least 2 draws"):
    bias.bootstrap(gold, src, [pruned], n, draws=1)


def test_cli_bias_each_scores_the_source_once(tmp_path, monkeypatch, capsys):
  tok, src = _arc_source(tmp_path, monkeypatch)
  p1 = _model(tmp_path / "a", "pruned", tok, 1, num_layers=1)
  p2 = _model(tmp_path / "b", "pruned", tok, 2, num_layers=1)
  # predictions set here (tiny random models all pick alike): the source is right on the
  # first 7 documents, p1 on all 10, p2 on none
  n = np.array([len(r["choices"]["text"]) for r in ARC_ROWS])
  gold = np.array(["ABCDE".index(r["answerKey"]) for r in ARC_ROWS])
  wrong = (gold + 1) % n
  fixed = {src: np.where(np.arange(10) < 7, gold, wrong), p1: gold, p2: wrong}
  scored = []
  monkeypatch.setattr(bias, "score_model",
                      lambda d, *a, **k: scored.append(d) or {"arc_easy": fixed[d]})
  out = tmp_path / "bias"
  assert eval_main(["bias", "--source", src, "--pruned", f"{p1},{p2},{src}", "--tasks",
                    "arc_easy", "--each", "--bootstrap", "25", "--zero_rates", "smooth",
                    "--out", str(out)]) == 0
  assert scored == [src, p1, p2, src]                 # the source once, then each model
  cap = capsys.readouterr()
  res = json.loads((out / "bias.json").read_text())
  assert res["each"] and res["labels"] == ["a/pruned", "b/pruned", "src"]
  ts = [r["tasks"]["arc_easy"] for r in res["runs"]]
  assert [t["accuracy"] for t in ts] == [{"source": 0.7, "pruned": [a]} for a in (1.0, 0.0, 0.7)]
  assert [t["pies"] for t in ts] == [[7, 8, 9], list(range(7)), []]
  # the source against itself: no bias, and none in any resample
  assert ts[2]["cev"] == 0 and ts[2]["bootstrap"]["cev_se"] == 0
  assert ts[0]["cev"] > 0 and ts[0]["bootstrap"]["cev_se"] > 0
  for lab, t in zip(res["labels"], ts):
    assert t["bootstrap"]["draws"] == 25 and f"|{lab}|arc_easy|10|" in cap.out
  # a model alone gives the same figures as the trial form with that one model
  from jshear.eval import datasets
  alone = bias.evaluate(src, [p2], "arc_easy", datasets.eval_sets_dir(),
                        zero_rates="smooth")["tasks"]["arc_easy"]
  assert (alone["cev"], alone["sde"]) == pytest.approx((ts[1]["cev"], ts[1]["sde"]))
  assert "bootstrap standard error over 25 resamples" in cap.out and "± " in cap.out
  # paired differences: zero between a model and itself, and the draw-by-draw spread otherwise
  same = bias.paired_difference(res, "src", "src")["arc_easy"]
  assert same == {"cev": (0.0, 0.0), "sde": (0.0, 0.0), "pies": (0, 0.0)}
  d = bias.paired_difference(res, "a/pruned", "b/pruned")["arc_easy"]["sde"]
  assert d[0] == pytest.approx(ts[1]["sde"] - ts[0]["sde"])
  draws = np.array(ts[1]["bootstrap"]["sde_draws"], float) - np.array(
      ts[0]["bootstrap"]["sde_draws"], float)
  assert d[1] == pytest.approx(np.nanstd(draws, ddof=1))
  # PIEs: b disagrees on documents 0-6, a on 7-9 -> 7 - 3, s.e. of a sum of +1s and -1s
  pies = bias.paired_difference(res, "a/pruned", "b/pruned")["arc_easy"]["pies"]
  assert pies == (4, pytest.approx(math.sqrt(10) * np.std([1] * 7 + [-1] * 3, ddof=1)))
  with pytest.raises(JShearError, match="no model labelled 'nope'"):
    bias.paired_difference(res, "src", "nope")
  assert sorted(p.name for p in out.iterdir()) == ["bias.json", "bias.md", "bias.png"]
