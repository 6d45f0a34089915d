"""Defaults every run config starts from; config files override what differs.

A run lists `stages` (any of prune, finalize, continue, export, pretrain, grow) that run in
order and resume wherever they stopped. Each training stage has its own block (prune,
continued, pretrain) with the same fields, so stages differ by config, not by code. A stage
listed again (pretrain,grow,pretrain) reads block `NAME_2` for its second listing when the
config has one (keys it lacks come from NAME), else NAME (docs/growth.md).
"""

from __future__ import annotations

import math

import ml_collections as mlc

STAGES = ("pretrain", "prune", "finalize", "continue", "export", "grow")


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
  # entropy | entropy_softmax: initial weights from the domains' conditional token entropies
  # (BiMix's training-free mixture; `python -m jshear.data stats DIR` shows them). "": off.
  c.domain_weights_from = ""
  c.domain_weights_temperature = 1.0  # entropy_softmax: w = softmax(H / temperature)
  c.upsample_last_fraction = 0.0      # domain upsampling in the last X of steps
  c.upsample_factors = mlc.ConfigDict()
  # LoRA (jshear/model/lora.py; Levanter's LoraConfig, MaxText's lora.*): rank > 0 trains
  # adapters on the frozen weights, scale alpha / rank; the stage's output (and the HF
  # export) is the merged dense model. Only the continue stage takes it.
  c.lora = mlc.ConfigDict()
  c.lora.rank = 0               # 0: off (full training)
  c.lora.alpha = 16.0           # Biderman et al. use alpha = 2 x rank
  c.lora.targets = "q,k,v,o,gate,up,down"  # a subset; embeddings and head never
  c.lora.dropout = 0.0          # on the adapter input, training only (Biderman et al.: 0.05)
  c.lora.save_adapters = False  # also write the unmerged adapters (PEFT layout) to
                                # WORKDIR/<stage output>_adapters/
  c.update(overrides)
  return c


def grow_block() -> mlc.ConfigDict:
  """The grow stage (Gstack depth growth, jshear/train/stages/grow.py; docs/growth.md)."""
  c = mlc.ConfigDict()
  c.factor = 0                  # g: the grown model has g x the source's layers (paper: 4)
  c.target_layers = 0           # or the grown depth, a multiple of the source's (set one)
  c.operator = "stack"          # stack | interleave | zero | random (jshear/model/grow.py)
  c.source = ""                 # a trained jshear or HF model dir; "": the previous stage's
  return c


def blockwise_block() -> mlc.ConfigDict:
  """The blockwise stage (Puzzle's blockwise local distillation between finalize and
  continue, jshear/train/stages/blockwise.py; docs/blockwise.md). Optimizer defaults are
  Puzzle's: lr 1e-4, 5% warm-up, weight decay 0.1, betas 0.9 / 0.95, clip 1.0."""
  c = mlc.ConfigDict()
  c.rows_per_domain = 16        # calibration rows a domain, from the training split
  c.steps = 60
  c.batch_size = 8              # rows a step (every block sees the same rows)
  c.mode = "entire_block"       # entire_block | mlp_only (sequential family)
  c.lr, c.schedule, c.warmup_steps, c.final_lr_fraction = 1e-4, "cosine", 3, 0.1
  c.weight_decay, c.b1, c.b2, c.eps, c.clip_norm = 0.1, 0.9, 0.95, 1e-8, 1.0
  c.nmse_eps = 1e-6             # the loss's denominator guard
  c.record_batch_size = 8       # rows a forward of the source while recording
  c.ckpt_every = 20             # block-training steps between checkpoints (kill -9 resumes)
  return c


def base_config() -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.seed = 0
  c.stages = "prune,finalize,continue,export"
  c.init_from = ""              # jshear model dir to start the first stage from
  c.overwrite = False           # allow a workdir that holds a different run's config
  c.final_eval = True           # per-domain loss of the source and final models at the end
  c.final_eval_rows = 64        # ... on the first N test rows a domain (mean +- s.e.)
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
  c.prune.method = "learned"        # a key of jshear.train.stages.choosers.CHOOSERS
  c.prune.groups = "layer,head,intermediate,hidden"
  c.prune.target = mlc.ConfigDict({"num_layers": 0, "num_heads": 0, "num_kv_heads": 0,
                                   "hidden_size": 0, "intermediate_size": 0})
  # True: the pruning and continue stages follow one lr schedule over prune.steps +
  # continued.steps (prune's lr, schedule, warmup_steps); the continue stage enters it at
  # step prune.steps, ramping its fresh optimizer up over continued.warmup_steps. False:
  # each stage its own warm-up and decay (reference). Only when the pruning stage trains.
  c.prune.one_schedule = False
  # A method's own knobs sit in its block; setting a knob (away from its default here) that
  # the chosen method does not read is refused (jshear.train.stages.choosers.check_knobs).

  # prune.method=learned (the Sheared-LLaMA method: hard-concrete masks, jshear/prune/).
  lc = c.prune.learned = mlc.ConfigDict()
  lc.constraint = "layer_mean"  # layer_mean (reference code) | per_layer | count (paper)
  lc.size_control = "lagrangian"  # lagrangian (reference) | projection (exact sizes)
  lc.log_alpha_bounds = (math.log(0.01), math.log(100.0))  # the clamp (reference)
  lc.mask_init = "uniform"      # uniform (reference: every gate intact) | importance
  lc.mask_init_spread = 6.0     # importance init: dropped units start up to this far
                                # above the lower bound (see jshear/prune/mask_init.py)
  lc.mask_init_band = 0.0       # importance init: this fraction of each set's units on
  lc.mask_init_band_width = 3.0  # either side of the cut start in (-width, +width)
  lc.mask_init_band_groups = ""  # the groups with a band ("": all)
  # sample (reference): the training forward uses a hard-concrete gate sample; deterministic:
  # the 0/1 masks finalize would keep, gradients straight through (jshear/prune/state.py).
  lc.gate_forward = "sample"
  lc.target_warmup_steps = 640
  # The optimizer groups of the masks and the Lagrange multipliers (jshear/optim.py).
  lc.mask_lr = 1.0
  lc.lambda_lr = -1.0           # negative: gradient ascent on the Lagrange multipliers
  lc.schedule_masks = True      # reference code scales mask/lambda lr by the schedule
  lc.clip_masks = True          # reference code clips masks and lambdas with the weights
  lc.settle_steps = 0           # > 0: mask/lambda lr falls linearly to 0 at this pruning
                                # step, then the gates stay put (0: off, the reference)

  # prune.method=layerchop (depth by layout, widths one-shot; jshear/prune/layerchop.py).
  c.prune.layerchop = mlc.ConfigDict()
  c.prune.layerchop.layout = "max_gap"   # max_gap | input | output | middle | both
  c.prune.layerchop.width = "importance"  # how widths shrink (importance | magnitude |
                                          # random | none: depth only)
  c.prune.layerchop.every = 0   # > 0: drop the layers one every N prune steps while
                                # training (the prune stage trains); 0: all at once

  # prune.method=dimchop (see jshear/prune/iterative.py): re-score by importance every N
  # steps; sizes reach the target after this fraction of prune.steps.
  c.prune.dimchop = mlc.ConfigDict()
  c.prune.dimchop.every = 10
  c.prune.dimchop.end_fraction = 0.75
  c.prune.dimchop.straight_through = 1.0  # gradient weight masked dims keep (0: frozen)

  # Calibration rows of activation-importance scores, read by prune.method=importance and
  # dimchop, learned with learned.mask_init=importance, layerchop with layerchop.width=
  # importance.
  c.prune.calib = mlc.ConfigDict()
  c.prune.calib.rows = 32       # the first N training rows of every domain
  c.prune.calib.batch = 8       # rows per scoring forward
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
  c.grow = grow_block()
  c.blockwise = blockwise_block()
  return c


# ---- which method reads which knob -------------------------------------------------------

def _reads_calib(cfg) -> bool:
  p = cfg.prune
  return (p.method in ("importance", "dimchop")
          or (p.method == "learned" and p.learned.mask_init == "importance")
          or (p.method == "layerchop" and p.layerchop.width == "importance"))


# prune.<block>: (whether this run's method reads it, who reads it). The train-block fields
# and prune.{method, groups, target, one_schedule} are read by every method that uses them.
KNOB_BLOCKS = {
    "learned": (lambda cfg: cfg.prune.method == "learned", "prune.method=learned"),
    "layerchop": (lambda cfg: cfg.prune.method == "layerchop", "prune.method=layerchop"),
    "dimchop": (lambda cfg: cfg.prune.method == "dimchop", "prune.method=dimchop"),
    "calib": (_reads_calib, "prune.method=importance or dimchop, learned with "
                            "prune.learned.mask_init=importance and layerchop with "
                            "prune.layerchop.width=importance"),
}


def _plain(x):
  if hasattr(x, "to_dict"):
    x = x.to_dict()
  if isinstance(x, dict):
    return {k: _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  return x


def _uses(cfg) -> str:
  p = cfg.prune
  if p.method == "learned":
    return f"learned with prune.learned.mask_init={p.learned.mask_init}"
  if p.method == "layerchop":
    return f"layerchop with prune.layerchop.width={p.layerchop.width}"
  return p.method


def unread_knobs(cfg) -> list[str]:
  """One message per key of a method block (prune.learned, .layerchop, .dimchop, .calib)
  that differs from its `base_config()` default although this run's method does not read it."""
  defaults = base_config().prune
  out = []
  for name, (reads, readers) in KNOB_BLOCKS.items():
    if name not in cfg.prune or reads(cfg):
      continue
    block, default = cfg.prune[name], defaults[name]
    for key in block:
      value = block[key]
      if key in default and _plain(value) == _plain(default[key]):
        continue
      uses = _uses(cfg) if name == "calib" else cfg.prune.method
      shown = value.to_dict() if hasattr(value, "to_dict") else value
      out.append(f"config.prune.{name}.{key}={shown!r} is read only by {readers} "
                 f"(this run uses {uses}); remove it or switch method")
  return out


def reset_unread_blocks(cfg) -> None:
  """Sets (in place) every method block this run's method does not read back to its
  `base_config()` default, so a config shared by several methods passes `check_knobs`."""
  defaults = base_config().prune
  unread = [name for name, (reads, _) in KNOB_BLOCKS.items() if not reads(cfg)]
  for name in unread:
    cfg.prune[name] = defaults[name]


def for_method(cfg, method: str) -> mlc.ConfigDict:
  """`cfg` (in place) switched to prune.method `method`, the method blocks that method does
  not read at their defaults: configs/demo.py:dimchop, a run config for another method."""
  cfg.prune.method = method
  reset_unread_blocks(cfg)
  return cfg
