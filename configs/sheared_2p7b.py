"""Sheared-LLaMA 2.7B: LLaMA2-7B -> 32 layers, 20 heads, hidden 2560, intermediate 6912.

The paper's recipe: 3200 pruning steps at 32 x 4096 (lr 1e-4, mask lr 1.0, lambda lr -1.0,
targets warmed up over 640 steps, reweighting every 50 steps from the pruning-stage
weights), then 48000 continued steps at 256 x 4096 (lr 1e-4 cosine, 3% warmup,
reweighting every 400 steps) with the LLaMA2-fitted 2.7B reference losses.
Set model.source to a local LLaMA2-7B HF dir and data.path to a prepared RedPajama
(`python -m jshear.train.plan` plans with model.source_shape until then).
"""

from jshear.config_base import base_config
from jshear.data import reweight

TARGET = dict(num_layers=32, num_heads=20, num_kv_heads=20, hidden_size=2560,
              intermediate_size=6912)
REF = "2.7B"


def get_config(target=TARGET, ref=REF):
  c = base_config()
  c.stages = "prune,finalize,continue,export"
  c.model.source = ""           # e.g. /data/Llama-2-7b-hf
  c.model.source_shape = "llama2-7b"   # what the planner assumes while model.source is empty
  c.model.compute_dtype = "bfloat16"
  c.model.remat = "full"
  c.data.path = ""              # e.g. /data/redpajama-prepared-4096
  c.data.seq_len = 4096
  c.mesh.ici.update(data=1, fsdp=-1, tensor=1)

  p = c.prune
  p.steps, p.batch_size, p.lr, p.warmup_steps = 3200, 32, 1e-4, 320
  p.learned.target_warmup_steps = 640
  p.learned.mask_lr, p.learned.lambda_lr = 1.0, -1.0
  p.groups = "layer,head,intermediate,hidden"
  p.target.update(**target)
  p.eval_every, p.reweight_every, p.reweight_rule = 50, 50, "sheared"
  p.ckpt_every, p.log_every = 200, 10
  p.domain_weights.update(reweight.INITIAL_WEIGHTS["pruning"])
  p.ref_losses.update(reweight.REFERENCE_LOSSES[ref])

  k = c.continued
  k.steps, k.batch_size, k.lr, k.warmup_steps = 48000, 256, 1e-4, 1440
  k.schedule = "cosine"
  k.eval_every, k.reweight_every, k.reweight_rule = 400, 400, "sheared"
  k.ckpt_every, k.log_every = 1000, 10
  k.domain_weights.update(reweight.INITIAL_WEIGHTS["continued"])
  k.ref_losses.update(reweight.REFERENCE_LOSSES[ref])
  return c
