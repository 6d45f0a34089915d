#!/bin/bash
# LoRA vs full continued pretraining of SmolLM2-135M on one domain (github), learning vs
# forgetting (docs/lora.md, "Evidence"). Run from the repo root, one run at a time.
# Decided before running: 40 steps x 4 x 256 = 40,960 github tokens a run; full at the data
# tools' continue lr (1e-4); LoRA rank 16, alpha 32, dropout 0.05, all seven projections
# (the paper's released settings) at the same lr and at 10x it (LoRA usually wants a larger
# lr); scored on the first 16 test rows a domain, paired against the source.
set -u
PY=${PY:-.venv/bin/python}
W='{"arxiv": 0.0, "book": 0.0, "c4": 0.0, "cc": 0.0, "github": 1.0, "stackexchange": 0.0, "wiki": 0.0}'
T="$PY -m jshear.train --config=configs/data_tools_demo.py --config.final_eval=False \
  --config.continued.steps=40 --config.continued.eval_every=0 --config.continued.warmup_steps=4"
L="--config.continued.lora.rank=16 --config.continued.lora.alpha=32.0 --config.continued.lora.dropout=0.05"
mkdir -p runs/logs
$T --workdir=runs/cpt_full --config.continued.domain_weights="$W" > runs/logs/cpt_full.log 2>&1
$T --workdir=runs/cpt_lora16 --config.continued.domain_weights="$W" $L > runs/logs/cpt_lora16.log 2>&1
$T --workdir=runs/cpt_lora16_lr1e-3 --config.continued.domain_weights="$W" $L \
  --config.continued.lr=1e-3 > runs/logs/cpt_lora16_lr1e-3.log 2>&1
SRC=$($PY -c "from jshear.train.stages.common import resolve_source; print(resolve_source('smollm2'))")
DATA=$(ls -d ~/.cache/jshear/prepared/local-v3-*-T256 | head -1)
$PY -m jshear.eval.forgetting --source=$SRC --data=$DATA --target=github --rows=16 \
  --continued=runs/cpt_full/continued,runs/cpt_lora16/continued,runs/cpt_lora16_lr1e-3/continued \
  --out=runs/forgetting > runs/logs/forgetting.log 2>&1
echo done > runs/lora_chain.finished
