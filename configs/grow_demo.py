"""Depth growth against training from scratch at equal FLOPs, on the local corpus with the
SmolLM2 tokenizer: a 4-layer model (d=256) pretrained 100 steps, grown x2 by Gstack to 8
layers, trained 200 more steps; against the 8-layer model from scratch for the same total
FLOPs (docs/growth.md, "Growth vs scratch").

  python -m jshear.train --config=configs/grow_demo.py --workdir=runs/grow_stack
  python -m jshear.train --config=configs/grow_demo.py --workdir=runs/grow_zero \
      --config.grow.operator=zero
  python -m jshear.train --config=configs/grow_demo.py --workdir=runs/grow_scratch \
      --config.stages=pretrain,export --config.model.num_layers=8 --config.pretrain.steps=282

282 = 200 + 100 x (FLOPs a token of the 4-layer model / of the 8-layer one): the vocabulary
head (49,152 x 256) is most of both, so the small model costs 0.824 of the grown one
(`jshear.metrics.model_flops_per_token` plus attention at T=256; docs/growth.md).
Budgets are demo-sized (about 300k tokens a run): the run shows the machinery and the
ordering early in training, not converged quality.
"""

import ml_collections as mlc

from jshear.config_base import base_config


def get_config():
  c = base_config()
  c.stages = "pretrain,grow,pretrain,export"
  m = c.model
  m.family, m.tie_embeddings, m.vocab_size = "llama", True, 49152
  m.hidden_size, m.intermediate_size, m.num_layers = 256, 768, 4
  m.num_heads, m.num_kv_heads, m.head_dim = 4, 2, 64
  m.tokenizer = _smollm2_tokenizer()
  c.data.corpus = "local"
  c.data.seq_len = 256
  t = c.pretrain
  t.steps, t.batch_size, t.lr, t.warmup_steps = 100, 4, 1e-3, 10
  t.schedule, t.final_lr_fraction, t.weight_decay = "cosine", 0.1, 0.1
  t.log_every, t.eval_every, t.eval_batches, t.ckpt_every = 5, 25, 2, 50
  t.reweight_rule = "constant"    # one mixture for every run: the model is what differs
  c.grow.factor, c.grow.operator = 2, "stack"
  # the grown model's own run: a fresh optimizer and schedule, the stream continuing; lr
  # 3e-4 after growth, as the public Gstack scripts (their base model: 1e-3)
  c.pretrain_2 = mlc.ConfigDict({"steps": 200, "lr": 3e-4})
  c.final_eval_rows = 64
  c.drop_checkpoints = True
  return c


def _smollm2_tokenizer() -> str:
  """The SmolLM2 asset's dir (`make setup` caches it; fetched on first use otherwise)."""
  from jshear.model_io import tokenizer_dir
  from jshear.train.stages.common import resolve_source
  path = resolve_source("smollm2")
  return tokenizer_dir(path) or path
