#!/bin/bash
# Issue 26 item 4, the mixtures: SmolLM2-135M continued pretraining on the local corpus,
# 30 steps x 4 rows x 256 tokens (30,720 tokens) a run, constant mixture, in-loop eval on
# validation rows every 10 steps (what mixlaw fit reads); scored afterwards on test rows.
cd /tmp/wt_exp
PY=.venv/bin/python
COMMON="--config.continued.steps=30 --config.continued.eval_batches=1 --config.continued.ckpt_every=30 --config.final_eval=False"
run() {  # name, extra overrides...
  local name=$1; shift
  [ -f runs/$name.done ] && [ "$(cat runs/$name.done)" = 0 ] && return
  $PY -m jshear.train --config=configs/data_tools_demo.py --workdir=runs/$name $COMMON "$@" > runs/$name.log 2>&1
  echo $? > runs/$name.done
}
run mix_uniform
run mix_softmax --config.continued.domain_weights_from=entropy_softmax --config.continued.domain_weights_temperature=0.5
run mix_dir2 '--config.continued.domain_weights={"arxiv": 0.118, "book": 0.073, "c4": 0.323, "cc": 0.079, "github": 0.127, "stackexchange": 0.202, "wiki": 0.079}'
run mix_entropy --config.continued.domain_weights_from=entropy
PREP=$(ls -d ~/.cache/jshear/prepared/local-*T256 | head -1)
$PY -m jshear.data mixlaw fit --runs runs/mix_uniform runs/mix_softmax runs/mix_dir2 runs/mix_entropy --out runs/law.json --data $PREP > runs/law_fit.log 2>&1
$PY -m jshear.data mixlaw optimize --law runs/law.json --steps 30 --out runs/mix_law.json > runs/law_opt.log 2>&1
W=$($PY -c "import json; print(json.dumps(json.load(open('runs/mix_law.json'))['domain_weights']))")
run mix_law "--config.continued.domain_weights=$W"
run mix_uniform_s1 --config.seed=1
echo all > runs/chain_mix.finished
