"""bench/accelerator.py --smoke: every part of the accelerator check runs at toy sizes on CPU,
so the script a GPU session runs cannot rot between sessions."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("environment", "kernels", "attention", "train_step", "planner", "blockwise")


def test_smoke_run_records_every_part(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JSHEAR_PALLAS_INTERPRET="1")
  p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "accelerator.py"), "--smoke",
                      "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                     timeout=300, cwd=ROOT)
  assert p.returncode == 0, p.stderr[-3000:]
  recs = [json.loads(line) for line in open(tmp_path / "accelerator.jsonl")]
  bad = [r for r in recs if r["status"] in ("error", "fail")]
  assert not bad, json.dumps(bad, indent=1)[:6000]
  for part in PARTS:
    done = [r for r in recs if r["part"] == part and r.get("record") == "part"]
    figures = [r for r in recs if r["part"] == part and r.get("record") != "part"
               and r["status"] == "ok"]
    assert len(done) == 1 and figures, f"part {part}: no record"
  by = lambda part: [r for r in recs if r["part"] == part]  # noqa: E731
  assert any(r.get("figure") == "bf16_matmul_peak" and r["tflops"] > 0
             for r in by("environment"))
  assert {r.get("impl") for r in by("kernels") if r["status"] == "ok"} >= {"pallas"}
  assert any(r.get("reason") == "skipped: no GPU" for r in by("kernels"))
  assert {r["name"] for r in by("train_step") if "mfu" in r} == {
      "llama1b_continue", "llama1b_prune", "smollm2_continue"}
  assert all(r["mfu"] > 0 for r in by("train_step") if "mfu" in r)
  plans = {r["name"] for r in by("planner") if "planner_gib" in r}
  assert plans == {"llama1b_continue", "llama1b_prune"}
  figs = {r.get("figure"): r for r in by("blockwise")}
  assert all(figs[f"{k}_step"]["tokens_per_s"] > 0 and figs[f"{k}_step"]["peak_bytes"] > 0
             for k in ("blocks", "distill", "record"))
  assert figs["ratios"]["blocks_over_distill_tokens_per_s"] > 0
  split = figs["work_split"]   # every block on exactly one device, padding to equal slots
  assert sorted(b for d in split["assignment"] for b in d) == list(range(split["blocks"]))
  assert split["devices"] * split["slots_per_device"] == split["blocks"] + split["padded_slots"]
  summary = (tmp_path / "summary.md").read_text()
  assert all(f"## {part}: ok" in summary for part in PARTS)
