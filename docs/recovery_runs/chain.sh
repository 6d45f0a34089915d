#!/bin/bash
# The four-way recovery (issue 28) and LoRA as recovery (issue 27), at equal tokens, with
# bias before and after recovery (docs/blockwise.md, docs/bias_metrics.md). Run from the
# repo root, one run at a time.
# Decided before running: one pruning (importance, one-shot, the demo target), recovered
# five ways on the 30-step table's budget (71,680 tokens a row: 70 continued steps of 4 x
# 256): full; lora:16 (alpha 32, at the continue stage's lr 3e-4); blockwise (20 block steps
# of 8 rows = 160 rows, counted: 40 continued steps fewer); distill; blockwise+distill.
# Scored on 64 test rows a domain, paired against full; zero-shot piqa, arc_easy, sciq
# (100 each) for the CEV and SDE columns after recovery; `jshear.eval bias` on the pruned
# model before recovery.
set -u
PY=${PY:-.venv/bin/python}
mkdir -p runs/logs
$PY -m jshear.experiments.compare --config=configs/compare_demo.py --workdir=runs/recovery \
  --config.compare.methods=importance \
  --config.compare.recovery=full,lora:16,blockwise,distill,blockwise+distill \
  --config.continued.lora.alpha=32.0 --config.blockwise.steps=20 \
  --config.compare.paired_with=importance --config.drop_checkpoints=True \
  > runs/logs/recovery.log 2>&1
SRC=$($PY -c "from jshear.train.stages.common import resolve_source; print(resolve_source('smollm2'))")
$PY -m jshear.eval bias --source=$SRC --pruned=runs/recovery/importance/pruned \
  --tasks=piqa,arc_easy,sciq --limit=100 --out=runs/recovery/bias_pruned --overwrite \
  > runs/logs/recovery_bias.log 2>&1
echo done > runs/recovery_chain.finished
