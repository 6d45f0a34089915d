#!/usr/bin/env bash
# Bias of every pruning method's model against SmolLM2-135M, before recovery (finalize's
# output, pruned/) and after it (continued/), from one compare run. Run from the repo root;
# about 35 min for the compare and 11 min for the bias on 2 idle CPU cores (2026-12-04).
set -euo pipefail
W=${W:-runs/bias_all}
SRC=${SRC:-$HOME/.cache/jshear/models/smollm2-135m}
M="importance learned dimchop layerchop magnitude random"
python -m jshear.experiments.compare --config=configs/compare_demo.py --workdir=$W \
    --config.compare.methods=${M// /,} --config.compare.zeroshot_tasks= \
    --config.drop_checkpoints=True
DIRS=$(for m in $M; do printf "%s," $W/$m/pruned $W/$m/continued; done)
# arc_easy: its whole validation split (570); piqa: the same number of its 1,838
python -m jshear.eval bias --source=$SRC --pruned=${DIRS%,} --tasks=arc_easy,piqa \
    --limit=570 --each --bootstrap=200 --seed=0 --out=$W/bias
# after - before for each method: CEV and SDE with the paired bootstrap s.e., PIEs with the
# s.e. of per-document paired differences
python - "$W/bias/bias.json" $M <<'PY'
import json, sys
from jshear.eval import bias
res = json.load(open(sys.argv[1]))
print("|method|task|CEV after - before|SDE after - before|PIEs after - before|")
print("|---|---|---:|---:|---:|")
for m in sys.argv[2:]:
  for task, d in bias.paired_difference(res, f"{m}/pruned", f"{m}/continued").items():
    f = lambda v: "-" if v[0] is None else f"{v[0]:+.1f} ± {v[1]:.1f}"
    print(f"|{m}|{task}|{f(d['cev'])}|{f(d['sde'])}|{f(d['pies'])}|")
PY
