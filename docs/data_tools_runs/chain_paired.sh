#!/bin/bash
# Paired scoring on the test rows (16 a domain, the same rows for every run; cached in each
# run's heldout.json): mixtures against uniform seed 0, bands against the pool's random half.
cd /tmp/wt_exp
while [ ! -f runs/chain_sel.finished ]; do sleep 20; done
PY=.venv/bin/python
$PY -m jshear.experiments.paired --config=configs/data_tools_demo.py --rows=16 \
  --baseline=runs/mix_uniform --runs=runs/mix_uniform_s1,runs/mix_entropy,runs/mix_softmax,runs/mix_dir2,runs/mix_law,runs/sel_random,runs/sel_low,runs/sel_medium,runs/sel_high > runs/paired_mix.log 2>&1
$PY -m jshear.experiments.paired --config=configs/data_tools_demo.py --rows=16 \
  --baseline=runs/sel_random --runs=runs/sel_low,runs/sel_medium,runs/sel_high > runs/paired_sel.log 2>&1
echo done > runs/chain_paired.finished
