"""CHOP's 300M PaLM-style model pretrained from scratch (parallel family): 24 layers,
d=1024, 16 heads, QK-norm, fused projections; batch ~2M tokens (512 x 4096).

The paper states layers, width and heads; the SwiGLU width (8/3 d rounded up to a multiple
of 256) and the 32k vocabulary are this config's choices. Set model.tokenizer and data.path.
"""

from jshear.config_base import base_config


def get_config(layers=24, d=1024, heads=16, inter=2816, steps=80000):
  c = base_config()
  c.stages = "pretrain,export"
  m = c.model
  m.family, m.qk_norm, m.tie_embeddings = "parallel", True, True
  m.vocab_size, m.hidden_size, m.intermediate_size = 32000, d, inter
  m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim = layers, heads, heads, d // heads
  m.compute_dtype, m.remat = "bfloat16", "dots"
  c.data.seq_len = 4096
  t = c.pretrain
  t.steps, t.batch_size, t.lr, t.warmup_steps = steps, 512, 3e-4, 2000
  t.schedule, t.final_lr_fraction, t.weight_decay = "cosine", 0.1, 0.1
  t.eval_every, t.ckpt_every, t.log_every = 1000, 1000, 10
  return c
