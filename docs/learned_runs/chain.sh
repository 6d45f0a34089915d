#!/bin/bash
# issue 29 evidence chain, one run at a time
cd /tmp/wt_exp
C="python -m jshear.experiments.compare --config=configs/compare_demo.py"
P=.venv/bin/python
run() { name=$1; shift; echo "start $name $(date -u +%H:%M:%S)" >> chain.log;
  /usr/bin/time -v $P -m jshear.experiments.compare --config=configs/compare_demo.py "$@" > logs/$name.log 2>&1;
  echo "done $name rc=$? $(date -u +%H:%M:%S)" >> chain.log; }
mkdir -p logs
run compare30_fair --workdir=runs/compare30_fair --config.compare.methods=importance,learned,scratch \
  --config.compare.zeroshot_tasks= --config.drop_checkpoints=True
for s in 5 3; do
run settle_s$s --workdir=runs/settle_s$s --config.seed=$s --config.compare.methods=importance,learned \
  --config.compare.zeroshot_tasks= --config.prune.one_schedule=True --config.prune.steps=120 \
  --config.prune.eval_every=60 --config.prune.learned.settle_steps=60 \
  --config.compare.paired_with=importance --config.drop_checkpoints=True
done
echo ALLDONE >> chain.log
