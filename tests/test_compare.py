"""`jshear.experiments.compare` on the tiny world: two methods to one target with equal continued
pretraining, the report files, reuse of finished runs, and config errors up front."""

import json
import os
import subprocess
import sys

import ml_collections as mlc
import numpy as np
import pytest

import tiny_world
from jshear.experiments import compare
from jshear.errors import JShearError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(world, methods):
  c = tiny_world.config(world)
  c.compare = mlc.ConfigDict({"methods": methods})
  c.stages = "prune,finalize,continue,export"
  k = c.continued
  k.steps, k.eval_every, k.ckpt_every, k.log_every, k.reweight_rule = 2, 0, 2, 1, "constant"
  c.prune.layerchop.width = "magnitude"  # importance has its own tests; keep this one quick
  return c


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return tiny_world.build(tmp_path_factory.mktemp("world"))


def test_compare_two_methods(world, tmp_path):
  cfg = _config(world, "magnitude,layerchop:input")
  cfg.compare.zeroshot_tasks, cfg.compare.zeroshot_limit = "piqa,arc_easy", 3
  cfg.compare.paired_with = "magnitude"
  res = compare.compare(cfg, str(tmp_path))
  assert list(res["methods"]) == ["magnitude", "layerchop-input"]
  for name, r in res["methods"].items():
    assert r["shape"] == {"num_layers": 3, "num_heads": 2, "num_kv_heads": 1, "hidden_size": 32,
                          "intermediate_size": 48}, name
    assert set(r["eval"]) == {"code", "legal", "misc"} and r["mean_loss"] > 0
    assert r["continue_tokens"] == 2 * 8 * tiny_world.SEQ and r["prune_tokens"] == 0
    assert r["wall_s"] > 0 and os.path.isdir(r["hf_dir"])
    z = r["zero_shot"]
    assert set(z) == {"piqa", "arc_easy", "mean"} and all(0.0 <= v <= 1.0 for v in z.values())
    assert z["mean"] == pytest.approx((z["piqa"] + z["arc_easy"]) / 2)
    # 3 documents each: accuracies are multiples of 1/3.
    assert all(abs(3 * z[t] - round(3 * z[t])) < 1e-9 for t in ("piqa", "arc_easy"))
  # Both methods pruned the same source to the same size: equal parameter counts.
  assert len({r["params"] for r in res["methods"].values()}) == 1
  assert res["source"]["mean_loss"] > 0
  # every model scored once: the source for the whole comparison, not in every method's run
  assert res["source"]["mean_loss"] == pytest.approx(
      json.load(open(tmp_path / "source_heldout.json"))["heldout"]["mean"])
  assert "eval" not in json.load(open(tmp_path / "magnitude" / "summary.json"))
  with open(tmp_path / "compare.json") as f:
    assert json.load(f)["methods"]["layerchop-input"]["layout"] == "input"
  md = (tmp_path / "compare.md").read_text()
  assert "| layerchop-input |" in md and "| source |" in md and "piqa acc" in md
  assert set(res["source"]["zero_shot"]) == {"piqa", "arc_easy", "mean"}
  assert res["plot"] == (tmp_path / "compare.png").exists()
  # The paired difference from the baseline: same rows, so its mean is the difference of
  # the two held-out means.
  assert res["paired_with"] == "magnitude" and "paired" not in res["methods"]["magnitude"]
  lc, mg = (res["methods"][n]["heldout"] for n in ("layerchop-input", "magnitude"))
  assert res["methods"]["layerchop-input"]["paired"]["mean"] == pytest.approx(
      lc["mean"] - mg["mean"], abs=1e-9)
  # And from the per-row losses by hand: per domain the mean row difference and its
  # standard error, then the mean over domains and sqrt(sum se_d^2) / K.
  means, ses = [], []
  for d in sorted(lc["domains"]):
    diff = (np.asarray(lc["domains"][d]["row_losses"]) -
            np.asarray(mg["domains"][d]["row_losses"]))
    means.append(diff.mean())
    ses.append(diff.std(ddof=1) / np.sqrt(len(diff)))
  got = res["methods"]["layerchop-input"]["paired"]
  assert got["mean"] == pytest.approx(np.mean(means), abs=1e-12)
  assert got["se"] == pytest.approx(np.sqrt(np.sum(np.square(ses))) / len(ses), rel=1e-9)
  assert "vs magnitude ± paired s.e." in md
  # jshear.experiments.paired scores finished runs against a baseline run the same way.
  from jshear.experiments.paired import paired
  pr = paired(cfg, str(tmp_path / "magnitude"), [str(tmp_path / "layerchop-input")], 64)
  assert pr[str(tmp_path / "magnitude")]["paired"] is None
  assert pr[str(tmp_path / "layerchop-input")]["paired"] == \
      res["methods"]["layerchop-input"]["paired"]
  with pytest.raises(JShearError, match="has no finished model"):
    paired(cfg, str(tmp_path / "magnitude"), [str(tmp_path / "nothing")], 64)
  # Over seeds: pairs (a, b) and (b, a) differ by +d and -d, so their mean is 0 and the
  # standard error between them (sample std / sqrt(2)) is |d|.
  from jshear.experiments.paired import over_seeds
  lci, mag = str(tmp_path / "layerchop-input"), str(tmp_path / "magnitude")
  d = res["methods"]["layerchop-input"]["paired"]["mean"]
  ov = over_seeds(cfg, [(lci, mag), (mag, lci)], 64)
  assert ov["n"] == 2 and [p["mean"] for p in ov["pairs"]] == pytest.approx([d, -d])
  assert ov["mean"] == pytest.approx(0.0, abs=1e-12)
  assert ov["se_between"] == pytest.approx(abs(d)) and abs(d) > 0
  assert over_seeds(cfg, [(lci, mag)], 64)["se_between"] is None
  with pytest.raises(JShearError, match="has no finished model"):
    over_seeds(cfg, [(lci, mag), (str(tmp_path / "nothing"), mag)], 64)

  # The CLI reuses finished runs (no training: fast) and writes the same table.
  cfg_path = tmp_path / "cmp.py"
  cfg_path.write_text(
      f"import sys\nsys.path.insert(0, {os.path.join(REPO, 'tests')!r})\n"
      "import ml_collections as mlc\nimport test_compare\n"
      f"def get_config():\n  c = test_compare._config({dict(world)!r}, "
      "'magnitude,layerchop:input')\n"
      "  c.compare.zeroshot_tasks, c.compare.zeroshot_limit = 'piqa,arc_easy', 3\n"
      "  return c\n")
  r = subprocess.run([sys.executable, "-m", "jshear.experiments.compare", f"--config={cfg_path}",
                      f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.path.join(REPO, "tests")))
  assert r.returncode == 0, r.stderr[-2000:]
  assert "| layerchop-input |" in r.stdout
  with open(tmp_path / "compare.json") as f:
    again = json.load(f)
  assert again["methods"]["magnitude"]["eval"] == res["methods"]["magnitude"]["eval"]
  assert again["methods"]["magnitude"]["zero_shot"] == res["methods"]["magnitude"]["zero_shot"]
  # jshear.experiments.paired over seeds from the command line (cached scores: fast); a malformed pair
  # is one error line and exit 2.
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.path.join(REPO, "tests"))
  cmd = [sys.executable, "-m", "jshear.experiments.paired", f"--config={cfg_path}"]
  r = subprocess.run(cmd + [f"--pairs={lci}:{mag},{mag}:{lci}"], cwd=REPO, capture_output=True,
                     text=True, env=env)
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"mean over 2 seeds: +0.000 ± {abs(d):.3f}" in r.stdout
  r = subprocess.run(cmd + [f"--pairs={lci}"], cwd=REPO, capture_output=True, text=True, env=env)
  assert r.returncode == 2 and "is not RUN:BASELINE" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("methods,pattern", [
    ("importance,pruning", "unknown method 'pruning'"),
    ("magnitude:input", "only layerchop takes"),
    ("layerchop:sides", "unknown layout"),
    ("random,random", "twice"),
    ("", "empty"),
])
def test_bad_method_lists(methods, pattern):
  with pytest.raises(JShearError, match=pattern):
    compare.parse_methods(methods)


def test_bad_target_fails_before_any_run(world, tmp_path):
  cfg = _config(world, "random,layerchop")
  cfg.prune.target.num_layers = 1  # random could do it; layerchop cannot keep first and last
  with pytest.raises(JShearError, match="at least 2 layers"):
    compare.compare(cfg, str(tmp_path))
  assert not os.path.exists(tmp_path / "random")


def test_paired_difference_by_hand():
  from jshear.eval.heldout import paired_difference
  a = {"domains": {"x": {"row_losses": [3.0, 5.0, 4.0]}, "y": {"row_losses": [2.0, 2.5]}}}
  b = {"domains": {"x": {"row_losses": [2.5, 4.0, 4.0]}, "y": {"row_losses": [2.0, 2.0]}}}
  # x: diffs .5, 1, 0 -> mean .5, sd .5, se .5/sqrt(3); y: 0, .5 -> mean .25, se .25
  p = paired_difference(a, b)
  assert p["mean"] == pytest.approx((0.5 + 0.25) / 2)
  assert p["se"] == pytest.approx(((0.5 / 3 ** 0.5) ** 2 + 0.25 ** 2) ** 0.5 / 2)
  with pytest.raises(ValueError, match="same rows"):
    paired_difference(a, {"domains": {"x": {"row_losses": [1.0]}, "y": {"row_losses": [1.0, 2.0]}}})


def test_bad_paired_with_fails_before_any_run(world, tmp_path):
  cfg = _config(world, "random")
  cfg.compare.paired_with = "importance"
  with pytest.raises(JShearError, match="paired_with='importance' is neither a method"):
    compare.compare(cfg, str(tmp_path))
  assert not os.path.exists(tmp_path / "random")


def test_demo_config_is_valid():
  from configs import compare_demo
  cfg = compare_demo.get_config()
  names = [n for n, _, _ in compare.parse_methods(cfg.compare.methods)]
  # Every way to choose masks, plus the from-scratch row, each once.
  from jshear.train.stages.choosers import PRUNE_METHODS
  assert sorted(names) == sorted(set(PRUNE_METHODS) | {"scratch"})
  from jshear.eval import tasks
  tasks.parse_task_names(cfg.compare.zeroshot_tasks)
  c = compare.method_config(cfg, "layerchop", "both")
  assert "compare" not in c and c.prune.layerchop.layout == "both" and not c.final_eval
  # Equal total tokens: one-shot methods continue for the pruning steps too; learned
  # masks (which train while pruning) keep the shared continued budget.
  k, p = cfg.continued, cfg.prune
  learned, imp = compare.method_config(cfg, "learned", None), compare.method_config(
      cfg, "importance", None)
  assert learned.continued.steps == k.steps
  assert imp.continued.steps * k.batch_size == k.steps * k.batch_size + p.steps * p.batch_size


def test_scratch_row_trains_the_target_shape_on_the_same_tokens(world):
  cfg = tiny_world.config(world)
  cfg.compare = {"methods": "scratch", "equal_tokens": True, "scratch_lr": 2e-3}
  c = compare.method_config(cfg, "scratch", None)
  t = cfg.prune.target
  assert c.stages == "pretrain" or c.stages.startswith("pretrain")
  assert (c.model.num_layers, c.model.num_heads, c.model.num_kv_heads, c.model.hidden_size,
          c.model.intermediate_size) == (t.num_layers, t.num_heads, t.num_kv_heads,
                                         t.hidden_size, t.intermediate_size)
  assert c.pretrain.lr == 2e-3
  tokens = c.pretrain.steps * c.pretrain.batch_size
  assert tokens == (cfg.continued.steps * cfg.continued.batch_size +
                    cfg.prune.steps * cfg.prune.batch_size)


def test_unequal_training_conditions_are_refused(monkeypatch):
  """Fair tables: one reweighting rule for every training step, and one shared stream when
  some methods train while pruning and others do not (configs only; nothing runs)."""
  monkeypatch.chdir(REPO)
  from configs import compare_demo
  methods = compare.parse_methods("learned,importance")
  fair = compare_demo.get_config()
  compare._check_fair({n: compare.method_config(fair, m, lay) for n, m, lay in methods})
  for key, value, words in (("prune.reweight_rule", "sheared", "prune.reweight_rule='sheared'"),
                            ("data.stream", "per_stage", "data.stream=shared")):
    cfg = compare_demo.get_config()
    block, leaf = key.split(".")
    cfg[block][leaf] = value
    configs = {n: compare.method_config(cfg, m, lay) for n, m, lay in methods}
    with pytest.raises(JShearError, match="unequal training conditions") as err:
      compare._check_fair(configs)
    assert words in str(err.value)


def test_recovery_variants_full_and_lora_give_one_row_each_per_method():
  """compare.recovery: every method once per variant; LoRA rows set continued.lora.rank
  and get their own run dir; scratch (from random weights) has its full row only."""
  cfg = tiny_world.config({"hf": "", "data": ""})
  cfg.compare = mlc.ConfigDict({"methods": "magnitude,layerchop:input,scratch",
                                "recovery": "full,lora:8"})
  rows = compare.runs(cfg)
  assert [(n, r.lora_rank) for n, _, _, r in rows] == [
      ("magnitude", 0), ("magnitude-lora8", 8), ("layerchop-input", 0),
      ("layerchop-input-lora8", 8), ("scratch", 0)]
  lora_cfg = compare.method_config(cfg, "magnitude", None, rows[1][3])
  assert lora_cfg.continued.lora.rank == 8 and lora_cfg.prune.lora.rank == 0
  assert compare.method_config(cfg, "magnitude", None).continued.lora.rank == 0
  from jshear import config_check
  assert config_check.problems(lora_cfg) == []
  for bad, pattern in (("lora", "unknown variant 'lora'"), ("lora:0", "unknown variant"),
                       ("qlora:4", "unknown variant"), ("full,full", "twice"), ("", "empty"),
                       ("blockwise+blockwise", "unknown variant"), ("full+distill", "unknown"),
                       ("distill+blockwise,blockwise+distill", "twice")):
    with pytest.raises(JShearError, match=pattern):
      compare.parse_recovery(bad)


def test_the_four_way_recovery_rows_spend_equal_tokens():
  """full, blockwise, distill, blockwise+distill: blockwise rows run the stage between
  finalize and continue and give up the continued steps holding their block-training rows;
  distill rows distil; every row's prune + blockwise + continued tokens are equal."""
  cfg = tiny_world.config({"hf": "", "data": ""})
  cfg.distill.enable = False
  cfg.continued.steps, cfg.continued.batch_size = 20, 4
  cfg.blockwise.steps, cfg.blockwise.batch_size = 6, 2     # 12 rows: 3 continued steps
  cfg.compare = mlc.ConfigDict({"methods": "magnitude", "equal_tokens": True,
                                "recovery": "full,blockwise,distill,blockwise+distill"})
  rows = compare.runs(cfg)
  assert [n for n, *_ in rows] == ["magnitude", "magnitude-blockwise", "magnitude-distill",
                                   "magnitude-blockwise-distill"]
  configs = {n: compare.method_config(cfg, m, lay, r) for n, m, lay, r in rows}
  got = {n: (c.stages, c.continued.steps, bool(c.distill.enable)) for n, c in configs.items()}
  plain, with_blocks = cfg.stages, cfg.stages.replace("finalize", "finalize,blockwise")
  one_shot = 20 + compare._extra_steps(cfg.prune, cfg.continued)   # magnitude: prune's too
  assert got == {"magnitude": (plain, one_shot, False),
                 "magnitude-blockwise": (with_blocks, one_shot - 3, False),
                 "magnitude-distill": (plain, one_shot, True),
                 "magnitude-blockwise-distill": (with_blocks, one_shot - 3, True)}
  from jshear import config_check
  for c in configs.values():
    assert config_check.problems(c) == []
  summaries = {n: {} for n in configs}
  res = compare.collect(cfg, [(n, m, lay) for n, m, lay, _ in rows], summaries, configs)
  totals = {n: r["total_tokens"] for n, r in res["methods"].items()}
  assert len(set(totals.values())) == 1, totals
  assert {n: r["recovery"] for n, r in res["methods"].items()} == {
      "magnitude": "full", "magnitude-blockwise": "blockwise", "magnitude-distill": "distill",
      "magnitude-blockwise-distill": "blockwise+distill"}
  cfg.blockwise.steps = 100
  with pytest.raises(JShearError, match="leaves no continued steps"):
    compare.method_config(cfg, "magnitude", None, rows[1][3])


def test_the_final_model_is_the_last_listed_stage_output(tmp_path):
  """pretrain,grow,pretrain: pretrained_2 (not the small model in pretrained/); a workdir
  without config.json falls back to the usual output names."""
  from jshear.model_io import CONFIG_FILE
  for d in ("pretrained", "grown", "pretrained_2"):
    os.makedirs(tmp_path / d)
    (tmp_path / d / CONFIG_FILE).write_text("{}")
  (tmp_path / "config.json").write_text(json.dumps({"stages": "pretrain,grow,pretrain,export"}))
  assert compare.final_model_dir(str(tmp_path)) == str(tmp_path / "pretrained_2")
  os.remove(tmp_path / "config.json")
  assert compare.final_model_dir(str(tmp_path)) == str(tmp_path / "pretrained")
