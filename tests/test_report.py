"""Run report from a synthetic workdir: every plot and report.md section appears."""

import json
import os

import numpy as np
import pytest

from jshear.errors import JShearError
from jshear.eval.report import main as report_main
from jshear.eval.report import write_report


def _workdir(tmp_path):
  wd = tmp_path / "run"
  (wd / "masks").mkdir(parents=True)
  (wd / "eval").mkdir()
  lines = []
  for stage, n in (("prune", 40), ("continued", 60)):
    for step in range(10, n + 1, 10):
      r = {"stage": stage, "step": step, "lm_loss": 4.0 - step / 100}
      if stage == "prune":
        r.update({"loss": r["lm_loss"] + 0.1, "lagrangian": 0.1,
                  "prune/head/expected_size": 8 - step / 10, "prune/head/target_size": 4.0,
                  "prune/head/lambda1": 0.01 * step, "prune/head/flips": step // 10,
                  "prune/layer/expected_size": 2.0,
                  "prune/layer/target_size": 1.0})           # layer has no lambdas: tolerated
      if step % 20 == 0:
        r.update({"eval/wiki/loss": 3.0 - step / 200, "eval/github/loss": 2.0 - step / 300})
      r.update({"data/weight/wiki": 0.6, "data/weight/github": 0.4})
      lines.append(json.dumps(r))
  lines.insert(3, "{not json")
  (wd / "metrics.jsonl").write_text("\n".join(lines) + "\n")
  np.savez(wd / "masks" / "masks.npz", layer=np.array([1.0, 0.0]),
           head=np.array([[1, 0, 1, 1], [1, 1, 0, 0]], np.float32),
           intermediate=(np.arange(2 * 96).reshape(2, 96) % 3 != 0).astype(np.float32),
           hidden=(np.arange(32) % 4 != 0).astype(np.float32))
  for name, v in (("before", 0.6), ("after", 0.5)):
    (wd / "eval" / f"{name}.json").write_text(json.dumps({"results": {
        "piqa": {"acc,none": v, "acc_norm,none": v + 0.01},
        "winogrande": {"acc,none": v - 0.05}}, "config": {"limit": 10}}))
    os.utime(wd / "eval" / f"{name}.json", (1e9 + (name == "after"), 1e9 + (name == "after")))
  (wd / "eval" / "ppl.json").write_text(json.dumps({"domains": {"wiki": {"loss": 2.0, "ppl": 7.39, "bpb": 0.9, "tokens": 100}}}))
  return wd


def test_report_writes_all_plots(tmp_path):
  wd = _workdir(tmp_path)
  made = write_report(str(wd))
  for name in ("loss.png", "domain_weights.png", "prune_sizes.png", "masks.png", "zeroshot.png", "report.md"):
    assert os.path.getsize(made[name]) > 1000 if name.endswith(".png") else os.path.exists(made[name])
  md = (wd / "report" / "report.md").read_text()
  for section in ("## Stages", "## Loss", "## Domain weights", "## Pruning", "## Surviving structure",
                  "## Zero-shot", "## Perplexity", "line 4: not JSON"):
    assert section in md, section
  assert "|piqa|acc_norm|61.0|51.0|" in md             # primary metric, before -> after
  assert "|head|[2, 4]|5/8|3, 2|" in md
  rows = {l.split("|")[1]: l for l in md.splitlines() if l.startswith("|") and l.count("|") == 7}
  assert rows["head"].endswith("|10|") and rows["layer"].endswith("|-|")  # flips 1+2+3+4


def test_report_tolerates_an_empty_workdir(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  assert report_main([str(tmp_path / "empty")]) == 0
  md = (tmp_path / "empty" / "report" / "report.md").read_text()
  assert "not found: training metrics" in md and "not found: masks" in md
  assert report_main([str(tmp_path / "nope")]) == 1
  assert "no such workdir" in capsys.readouterr().err
  with pytest.raises(JShearError):
    write_report(str(tmp_path / "nope"))


def test_metrics_reader_skips_a_torn_last_line(tmp_path):
  from jshear.metrics import read_metrics
  (tmp_path / "metrics.jsonl").write_text(
      '{"stage": "prune", "step": 1, "loss": 2.0}\n{"step": 2}\n{"note": 1}\n{"stage": "pru')
  warns = []
  recs = read_metrics(str(tmp_path), warns)
  assert [(r["stage"], r["step"]) for r in recs] == [("prune", 1), ("train", 2)]
  assert warns == ["metrics.jsonl line 3: no numeric 'step', skipped",
                   "metrics.jsonl line 4: not JSON, skipped"]
  assert read_metrics(str(tmp_path)) == recs and read_metrics(str(tmp_path / "none")) == []
