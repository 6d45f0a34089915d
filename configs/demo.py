"""The whole pipeline on one machine: SmolLM2-135M -> about 1/3 of its non-embedding
parameters (20 layers, 6 heads / 2 KV heads, hidden 384, intermediate 1024), on the local
registry corpus, in about 10 minutes on 2 CPU cores. `make demo` runs it.

Budgets are tiny (tens of steps): the demo shows every stage working end to end; the
README gives the longer command whose numbers it reports.
"""

from jshear.config_base import base_config


def get_config():
  c = base_config()
  c.stages = "prune,finalize,continue,export"
  c.model.source = "smollm2"
  c.data.corpus = "local"
  c.data.seq_len = 256

  p = c.prune
  p.steps, p.batch_size, p.lr, p.warmup_steps = 30, 4, 1e-4, 3
  p.target_warmup_steps = 10
  p.groups = "layer,kv,intermediate,hidden"
  p.target.update(num_layers=20, num_heads=6, num_kv_heads=2, hidden_size=384,
                  intermediate_size=1024)
  p.log_every, p.eval_every, p.eval_batches, p.ckpt_every = 2, 10, 1, 10
  p.reweight_rule, p.reweight_every = "sheared", 10

  k = c.continued
  k.steps, k.batch_size, k.lr, k.warmup_steps = 40, 4, 3e-4, 4
  k.log_every, k.eval_every, k.eval_batches, k.ckpt_every = 5, 20, 1, 20
  k.reweight_rule, k.reweight_every = "sheared", 20
  return c
