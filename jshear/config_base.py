"""Defaults every run config starts from; config files override what differs.

A run lists `stages` (any of prune, finalize, continue, export, pretrain) that run in order
and resume wherever they stopped. Each training stage has its own block (prune, continued,
pretrain) with the same fields, so stages differ by config, not by code.
"""

from __future__ import annotations

import math

import ml_collections as mlc

STAGES = ("pretrain", "prune", "finalize", "continue", "export")


def train_block(**overrides) -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.steps = 100
  c.batch_size = 8              # global sequences per step
  c.grad_accum = 1              # micro-batches per step
  c.lr = 1e-4
  c.schedule = "cosine"         # cosine | linear | constant | wsd
  c.warmup_steps = 10
  c.final_lr_fraction = 0.1
  c.decay_fraction = 0.2        # wsd only: share of steps spent decaying
  c.weight_decay = 0.0
  c.b1 = 0.9
  c.b2 = 0.95
  c.eps = 1e-8
  c.clip_norm = 1.0
  c.log_every = 10
  c.eval_every = 50             # per-domain held-out loss (and dynamic reweighting)
  c.eval_batches = 2            # eval batches of `batch_size` rows per domain
  c.ckpt_every = 100
  c.keep_last = 2
  c.keep_every = 0              # also keep every K-th step forever (0: off)
  c.max_bad_steps = 5           # abort after this many non-finite steps in a row
  # Dynamic batch loading: rule in {constant, sheared, sheared_code, doremi}.
  c.reweight_rule = "constant"
  c.reweight_every = 0          # 0: reweight at every eval
  c.reweight_eta = 1.0
  c.reweight_smoothing = 1e-4
  c.ref_losses = mlc.ConfigDict()     # {domain: loss}; empty with rule != constant -> source
  c.domain_weights = mlc.ConfigDict()  # {domain: w}; empty -> uniform over prepared domains
  c.upsample_last_fraction = 0.0      # domain upsampling in the last X of steps
  c.upsample_factors = mlc.ConfigDict()
  # Pruning-stage only (ignored elsewhere).
  c.mask_lr = 1.0
  c.lambda_lr = -1.0            # negative: gradient ascent on the Lagrange multipliers
  c.schedule_masks = True       # reference code scales mask/lambda lr by the schedule
  c.clip_masks = True           # reference code clips masks and lambdas with the weights
  c.update(overrides)
  return c


def base_config() -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.seed = 0
  c.stages = "prune,finalize,continue,export"
  c.init_from = ""              # jshear model dir to start the first stage from
  c.overwrite = False           # allow a workdir that holds a different run's config
  c.final_eval = True           # per-domain loss of the source and final models at the end
  c.drop_checkpoints = False    # True: a finished run deletes its stages' checkpoints (train
                                # state + loader position; jshear/train/cleanup.py)

  c.model = mlc.ConfigDict()
  c.model.source = ""           # HF dir, jshear model dir, or an asset name ("smollm2")
  c.model.source_shape = ""     # planner only: source shape by name (jshear.train.plan.SOURCE_SHAPES)
  c.model.compute_dtype = "float32"  # bfloat16 for mixed precision (fp32 master weights)
  c.model.param_dtype = "float32"
  c.model.attention_impl = "xla"
  c.model.remat = "dots_no_batch"  # see jshear.model.config.ModelConfig.remat
  c.model.scan_layers = True    # False: a Python loop over layers (faster on CPU, slower compile)
  # Shape for `pretrain` from scratch (ignored when loading a source model).
  c.model.family = "llama"
  c.model.vocab_size = 32000
  c.model.hidden_size = 512
  c.model.intermediate_size = 1376
  c.model.num_layers = 8
  c.model.num_heads = 8
  c.model.num_kv_heads = 8
  c.model.head_dim = 64
  c.model.qk_norm = False
  c.model.tie_embeddings = False
  c.model.rope_theta = 10000.0
  c.model.tokenizer = ""        # tokenizer dir for pretrain from scratch

  c.mesh = mlc.ConfigDict()
  c.mesh.ici = mlc.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
  c.mesh.dcn = mlc.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})

  c.data = mlc.ConfigDict()
  c.data.path = ""              # a prepared dataset (python -m jshear.data.prepare)
  c.data.corpus = ""            # "local": build + prepare the registry corpus when path is empty
  c.data.seq_len = 512
  c.data.max_domain_mb = 0.0    # local corpus: cap per domain for quick runs (0: all)
  # per_stage: each training stage its own shuffled stream (seed per stage). shared: prune
  # and continue draw one stream; continue picks it up where this workdir's pruning stage
  # stopped (at its start when that stage did not train), so methods compared at equal
  # tokens train on the same rows in the same order.
  c.data.stream = "per_stage"

  c.distributed = mlc.ConfigDict()
  c.distributed.coordinator = ""
  c.distributed.num_processes = 0
  c.distributed.process_id = -1

  c.prune = train_block(steps=3200, batch_size=32, lr=1e-4, warmup_steps=320,
                        reweight_every=50)
  c.prune.method = "learned"
  c.prune.groups = "layer,head,intermediate,hidden"
  c.prune.constraint = "layer_mean"  # layer_mean (reference code) | per_layer | count (paper)
  c.prune.size_control = "lagrangian"  # lagrangian (reference) | projection (exact sizes)
  c.prune.log_alpha_bounds = (math.log(0.01), math.log(100.0))  # the clamp (reference)
  c.prune.mask_init = "uniform"      # uniform (reference: every gate intact) | importance
  c.prune.mask_init_spread = 6.0     # importance init: dropped units start up to this far
                                     # above the lower bound (see jshear/prune/mask_init.py)
  c.prune.mask_init_band = 0.0       # importance init: this fraction of each set's units on
  c.prune.mask_init_band_width = 3.0  # either side of the cut start in (-width, +width)
  c.prune.mask_init_band_groups = ""  # the groups with a band ("": all)
  # sample (reference): the training forward uses a hard-concrete gate sample; deterministic:
  # the 0/1 masks finalize would keep, gradients straight through (jshear/prune/state.py).
  c.prune.gate_forward = "sample"
  c.prune.target_warmup_steps = 640
  # True: the pruning and continue stages follow one lr schedule over prune.steps +
  # continued.steps (prune's lr, schedule, warmup_steps); the continue stage enters it at
  # step prune.steps, ramping its fresh optimizer up over continued.warmup_steps. False:
  # each stage its own warm-up and decay (reference). Only when the pruning stage trains.
  c.prune.one_schedule = False
  c.prune.target = mlc.ConfigDict({"num_layers": 0, "num_heads": 0, "num_kv_heads": 0,
                                   "hidden_size": 0, "intermediate_size": 0})
  # Mask choosers other than learned (one-shot, or iterative while training).
  c.prune.layerchop_layout = "max_gap"   # max_gap | input | output | middle | both
  c.prune.layerchop_width = "importance"  # layerchop: how widths shrink (importance |
                                          # magnitude | random | none: depth only)
  c.prune.calib_rows = 32       # importance: first N training rows of every domain
  c.prune.calib_batch = 8       # importance: rows per scoring forward
  c.prune.layerchop_every = 0   # > 0: drop LayerCHOP's layers one every N prune steps while
                                # training (the prune stage trains); 0: all at once
  # DimCHOP (prune.method=dimchop, see jshear/prune/iterative.py): re-score by importance
  # every N steps; sizes reach the target after this fraction of prune.steps.
  c.prune.dimchop_every = 10
  c.prune.dimchop_end_fraction = 0.75
  c.prune.dimchop_straight_through = 1.0  # gradient weight masked dims keep (0: frozen)
  c.continued = train_block(steps=48000, batch_size=256, lr=1e-4, warmup_steps=1440,
                            reweight_every=400)
  c.pretrain = train_block()

  # Distillation during the continue stage (jshear/distill.py).
  c.distill = mlc.ConfigDict()
  c.distill.enable = False
  c.distill.teachers = ""       # comma-separated model dirs; "" = the unpruned source
  c.distill.weight = 1.0        # weight of T^2 * KL(teacher || student)
  c.distill.lm_weight = 1.0     # weight of the LM loss while distilling (1 after)
  c.distill.temperature = 1.0
  c.distill.first_fraction = 1.0  # distill only during the first X of the continue steps
  c.distill.hidden_layers = ""  # student layers whose residual stream is matched: "3,7"
                                # or student:teacher pairs "3:5,7:11"; "" = logits only
  c.distill.hidden_weight = 1.0
  c.export = mlc.ConfigDict({"dtype": ""})  # "" keeps the params' dtype
  return c
