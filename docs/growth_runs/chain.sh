#!/bin/bash
# Growth vs scratch at equal FLOPs (docs/growth.md): run from the repo root, one run at a time.
# Decided before running: the stack run at the public scripts' post-growth lr (3e-4) is the
# primary row; zero growth (the function-preserving operator) and stack at the base lr (1e-3)
# are its controls; all are paired against the 8-layer model from scratch on the same test
# rows (the control last: it is the first row cut when time runs out).
set -u
PY=${PY:-.venv/bin/python}
T="$PY -m jshear.train --config=configs/grow_demo.py --config.final_eval=False"
P="$PY -m jshear.experiments.paired --config=configs/grow_demo.py --rows=64 --baseline=runs/grow_scratch"
mkdir -p runs/logs
$T --workdir=runs/grow_stack --config.pretrain_2.lr=3e-4 > runs/logs/grow_stack.log 2>&1
$T --workdir=runs/grow_scratch --config.stages=pretrain,export --config.model.num_layers=8 \
  --config.pretrain.steps=282 > runs/logs/grow_scratch.log 2>&1
$P --runs=runs/grow_stack > runs/logs/grow_paired.log 2>&1
$T --workdir=runs/grow_zero --config.pretrain_2.lr=3e-4 --config.grow.operator=zero > runs/logs/grow_zero.log 2>&1
$P --runs=runs/grow_stack,runs/grow_zero > runs/logs/grow_paired.log 2>&1
$T --workdir=runs/grow_stack_lr1e-3 --config.pretrain_2.lr=1e-3 > runs/logs/grow_stack_lr1e-3.log 2>&1
$P --runs=runs/grow_stack,runs/grow_zero,runs/grow_stack_lr1e-3 > runs/logs/grow_paired.log 2>&1
echo done > runs/grow_chain.finished
