"""The README's pruning result: SmolLM2-135M -> the demo target with learned masks, a few
hundred steps at small batch on the local corpus, then finalize and export (no continued
pretraining, so the comparison with one-shot baselines is about mask choice alone).

  python -m jshear.train --config=configs/prune_smollm2.py --workdir=runs/prune_smollm2
  python -m jshear.train --config=configs/prune_smollm2.py --workdir=runs/magnitude \
  python -m jshear.train --config=configs/prune_smollm2.py:magnitude --workdir=runs/magnitude

(`:M` sets prune.method=M and drops the learned recipe, which M does not read.)
"""

from configs import demo
from jshear.config_base import for_method


def get_config(method: str = "learned"):
  c = demo.get_config()
  c.stages = "prune,finalize,export"
  p = c.prune
  p.steps, p.batch_size, p.warmup_steps = 200, 4, 10
  p.learned.target_warmup_steps = 40      # 20% of the steps, as the paper's 640 / 3200
  p.log_every, p.eval_every, p.eval_batches, p.ckpt_every = 5, 50, 2, 50
  p.reweight_rule, p.reweight_every = "sheared", 50
  return for_method(c, method)
