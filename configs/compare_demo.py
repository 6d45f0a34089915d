"""Ways to shrink, side by side: SmolLM2-135M -> the demo target (20 layers, 6 heads / 2 KV
heads, hidden 384, intermediate 1024) by learned masks, DimCHOP (iterative
importance pruning while training), one-shot activation importance, LayerCHOP (depth by
layout, widths by importance), weight magnitude and random masks, each followed by the same
small budget on the local corpus (equal total tokens: pruning plus continued), and a
from-scratch row; held-out loss with its standard error and zero-shot accuracy on the
first 100 documents of PIQA, ARC-Easy and SciQ.

  python -m jshear.experiments.compare --config=configs/compare_demo.py --workdir=runs/compare
  python -m jshear.experiments.compare --config=configs/compare_demo.py --workdir=runs/layouts \
      --config.compare.methods=layerchop:max_gap,layerchop:input,layerchop:output

Budgets are demo-sized (tens of steps): the table shows the machinery and the ordering right
after recovery starts, not converged quality. Raise continued.steps for a real comparison.
"""

import ml_collections as mlc

from configs import demo


def get_config():
  c = demo.get_config()
  c.stages = "prune,finalize,continue,export"
  # equal_tokens: one-shot methods get the pruning stage's tokens as extra continued steps,
  # so every row trains on the same total; scratch trains the target shape from random init
  # on that total.
  c.compare = mlc.ConfigDict({"methods": "learned,importance,scratch,dimchop,layerchop,"
                                         "magnitude,random",
                              "zeroshot_tasks": "piqa,arc_easy,sciq", "zeroshot_limit": 100,
                              "equal_tokens": True, "scratch_lr": 1e-3, "heldout_rows": 64,
                              "paired_with": "importance",
                              # recovery after pruning: "full" and/or "lora:RANK" rows
                              "recovery": "full"})

  p = c.prune                     # learned (demo recipe) and dimchop train; one-shot skip it
  p.steps, p.batch_size, p.warmup_steps = 30, 4, 3
  p.layerchop.layout = "max_gap"   # each method's block; compare resets the blocks a
  p.layerchop.width = "importance"  # method does not read to their defaults
  # dimchop: the defaults re-score every 10 steps (steps 0, 10, 20), target reached at 20.

  k = c.continued                 # the same budget for every method
  k.steps, k.batch_size, k.lr, k.warmup_steps = 40, 4, 3e-4, 4
  k.log_every, k.eval_every, k.eval_batches, k.ckpt_every = 5, 0, 2, 50
  k.reweight_rule = "constant"    # same data mixture for every method
  p.reweight_rule = "constant"    # ... in the pruning steps too (compare refuses otherwise)
  # The same rows in the same order: the learned and dimchop rows draw their pruning and
  # continued steps from one stream, the one-shot rows their continued steps from its start.
  c.data.stream = "shared"
  c.distill.enable = False        # LM loss only (the demo distils; the table predates that)
  return c
