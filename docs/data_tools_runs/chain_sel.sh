#!/bin/bash
# Issue 26 item 4, perplexity selection: a seeded 1% random pool of every domain's training
# rows, scored by SmolLM2-135M itself (the reference: see docs/data_tools_evidence.md), then
# per-domain bands at rate 0.5 (and a random half of the pool as the band runs' baseline),
# each trained like the mixture runs (30 steps x 4 x 256, uniform weights, seed 0).
cd /tmp/wt_exp
while [ ! -f runs/chain_mix.finished ]; do sleep 20; done
PY=.venv/bin/python
PREP=$(ls -d ~/.cache/jshear/prepared/local-*T256 | head -1)
SM=$(ls -d ~/.cache/jshear/models/smollm2-135m)
COMMON="--config.continued.steps=30 --config.continued.eval_batches=1 --config.continued.ckpt_every=30 --config.final_eval=False"
[ -d runs/sel/pool ] || $PY -m jshear.data select --data=$PREP --band=random --rate=0.01 --seed=0 --out=runs/sel/pool > runs/sel_pool.log 2>&1
$PY -m jshear.data score --model=$SM --data=runs/sel/pool --out=runs/sel/scores --batch_size=4 > runs/sel_score.log 2>&1 || exit 1
for band in low medium high; do
  [ -d runs/sel/$band ] || $PY -m jshear.data select --scores=runs/sel/scores --band=$band --rate=0.5 --per_domain --out=runs/sel/$band >> runs/sel_select.log 2>&1
done
[ -d runs/sel/global_high ] || $PY -m jshear.data select --scores=runs/sel/scores --band=high --rate=0.5 --out=runs/sel/global_high >> runs/sel_select.log 2>&1
[ -d runs/sel/random ] || $PY -m jshear.data select --data=runs/sel/pool --band=random --rate=0.5 --seed=1 --out=runs/sel/random >> runs/sel_select.log 2>&1
run() {
  local name=$1; shift
  [ -f runs/$name.done ] && [ "$(cat runs/$name.done)" = 0 ] && return
  $PY -m jshear.train --config=configs/data_tools_demo.py --workdir=runs/$name $COMMON "$@" > runs/$name.log 2>&1
  echo $? > runs/$name.done
}
for band in random medium low high; do run sel_$band --config.data.path=$(pwd)/runs/sel/$band; done
echo all > runs/chain_sel.finished
