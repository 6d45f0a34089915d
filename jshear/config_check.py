"""The whole run config checked before a run writes anything: every enumerated key against
its allowed values, every number against its range.

`check(cfg)` raises one `JShearError` naming each bad key with its value and the rule, e.g.
  config.continued.lr=-1.0 must be >= 0 (a negative learning rate trains by gradient ascent)

A bottom-layer module (it imports only `jshear.errors` and the standard library), so the
allowed-value tuples below are their single definition: the modules that use them
(`jshear.optim`, `jshear.train.step`, `jshear.prune.state`, ...) import them from here.

The checks are a table of (key path, rule, why); `lookup` also finds a key that moved one
level down into a sub-block (`prune.mask_lr` finds `prune.learned.mask_lr`), so splitting a
block into sub-blocks does not silently drop its checks (tests/test_bad_input.py asserts
that every path in the table resolves in `base_config()`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

from jshear.errors import JShearError

# ---- allowed values (the single definition) ----------------------------------------------

SCHEDULES = ("cosine", "linear", "constant", "wsd")                 # <block>.schedule
REWEIGHT_RULES = ("sheared", "sheared_code", "doremi", "constant")  # <block>.reweight_rule
CONSTRAINTS = ("layer_mean", "per_layer", "count")                  # prune.learned.constraint
SIZE_CONTROLS = ("lagrangian", "projection")                        # prune.learned.size_control
GATE_FORWARDS = ("sample", "deterministic")                         # prune.learned.gate_forward
MASK_INITS = ("uniform", "importance")                              # prune.learned.mask_init
# prune.method: the keys of jshear.train.stages.choosers.CHOOSERS (a test keeps them equal).
PRUNE_METHODS = ("learned", "dimchop", "layerchop", "importance", "magnitude", "random")
LAYERCHOP_LAYOUTS = ("max_gap", "input", "output", "middle", "both")  # prune.layerchop.layout
LAYERCHOP_WIDTHS = ("importance", "magnitude", "random", "none")      # prune.layerchop.width
# <block>.domain_weights_from ("": the block's domain_weights, or uniform)
DOMAIN_WEIGHTS_FROM = ("", "entropy", "entropy_softmax")
STREAMS = ("per_stage", "shared")                                   # data.stream
CORPORA = ("", "local")                                             # data.corpus
ATTENTION_IMPLS = ("xla", "cudnn", "pallas", "splash", "auto")      # model.attention_impl
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")          # model.remat
FAMILIES = ("llama", "parallel")                                    # model.family
COMPUTE_DTYPES = ("", "float32", "bfloat16", "float16")             # model.compute_dtype
PARAM_DTYPES = ("float32", "bfloat16", "float16")                   # model.param_dtype
EXPORT_DTYPES = ("", "float32", "bfloat16", "float16")              # export.dtype ("": keep)
GROW_OPERATORS = ("stack", "interleave", "zero", "random")          # grow.operator
BLOCKWISE_MODES = ("entire_block", "mlp_only")                      # blockwise.mode
# <block>.lora.targets: the seven projections LoRA may adapt (never embeddings or the head)
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")

TRAIN_BLOCKS = ("prune", "continued", "pretrain")


# ---- rules -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Rule:
  ok: Callable[[Any], bool]
  text: str                      # what the value must be: "must be " + text


def _real(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def one_of(values) -> Rule:
  return Rule(lambda x: x in values, f"one of {tuple(values)}")


def count(lo: int) -> Rule:
  return Rule(lambda x: _int(x) and x >= lo, f"an integer >= {lo}")


def at_least(lo: float) -> Rule:
  return Rule(lambda x: _real(x) and x >= lo, f">= {lo:g}")


def above(lo: float) -> Rule:
  return Rule(lambda x: _real(x) and x > lo, f"> {lo:g}")


def within(lo: float, hi: float, *, lo_open=False, hi_open=False) -> Rule:
  def ok(x):
    return (_real(x) and (x > lo if lo_open else x >= lo) and (x < hi if hi_open else x <= hi))
  return Rule(ok, f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")


NONZERO = Rule(lambda x: _real(x) and x != 0, "a finite number != 0")


def _values(x):
  return list(x.values()) if hasattr(x, "values") else None


def values_at_least(lo: float) -> Rule:
  return Rule(lambda x: _values(x) is not None and all(_real(v) and v >= lo for v in _values(x)),
              f"a mapping of finite values >= {lo:g}")


WEIGHTS = Rule(lambda x: _values(x) is not None and all(_real(v) and v >= 0 for v in _values(x))
               and (not _values(x) or sum(_values(x)) > 0),
               "a mapping of finite weights >= 0 with a positive sum (empty: uniform)")
FINITE_VALUES = Rule(lambda x: _values(x) is not None and all(_real(v) for v in _values(x)),
                     "a mapping of finite values")


def _bounds_ok(x) -> bool:
  try:
    lo, hi = x
  except (TypeError, ValueError):
    return False
  return _real(lo) and _real(hi) and lo < hi


BOUNDS = Rule(_bounds_ok, "(low, high) with finite low < high")


def _targets_ok(x) -> bool:
  if not isinstance(x, str):
    return False
  names = [t.strip() for t in x.split(",") if t.strip()]
  return bool(names) and all(t in LORA_TARGETS for t in names)


TARGETS = Rule(_targets_ok, f"a comma-separated subset of {LORA_TARGETS}")
OFF = Rule(lambda x: x == 0, "0")


# ---- the table ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Check:
  path: str                        # dotted key path under `config.`
  rule: Rule
  why: str = ""                    # the reason, shown in parentheses
  when: Callable | None = None     # cfg -> bool: only check when this holds


# Every training block (prune, continued, pretrain) has these fields (config_base.train_block).
BLOCK_CHECKS = (
    Check("steps", count(1), "a training stage needs at least one step"),
    Check("batch_size", count(1)),
    Check("grad_accum", count(1)),
    Check("lr", at_least(0), "a negative learning rate trains by gradient ascent"),
    Check("schedule", one_of(SCHEDULES)),
    Check("warmup_steps", count(0)),
    Check("final_lr_fraction", within(0, 1)),
    Check("decay_fraction", within(0, 1)),
    Check("weight_decay", at_least(0)),
    Check("b1", within(0, 1, hi_open=True)),
    Check("b2", within(0, 1, hi_open=True)),
    Check("eps", above(0)),
    Check("clip_norm", at_least(0), "0 turns clipping off"),
    Check("log_every", count(1)),
    Check("eval_every", count(0), "0 turns evaluation off"),
    Check("eval_batches", count(1)),
    Check("ckpt_every", count(1)),
    Check("keep_last", count(1)),
    Check("keep_every", count(0), "0 turns it off"),
    Check("max_bad_steps", count(1)),
    Check("reweight_rule", one_of(REWEIGHT_RULES)),
    Check("reweight_every", count(0), "0 reweights at every eval"),
    Check("reweight_eta", at_least(0)),
    Check("reweight_smoothing", within(0, 1)),
    Check("upsample_last_fraction", within(0, 1)),
    Check("upsample_factors", values_at_least(0)),
    Check("domain_weights", WEIGHTS),
    Check("domain_weights_from", one_of(DOMAIN_WEIGHTS_FROM)),
    Check("domain_weights_temperature", above(0)),
    Check("ref_losses", FINITE_VALUES),
    # LoRA (jshear/model/lora.py); the rank against the model's matrices is checked by the
    # continue stage, which knows the shape it starts from.
    Check("lora.rank", count(0), "0 turns LoRA off"),
    Check("lora.alpha", above(0), "the adapter scale is alpha / rank"),
    Check("lora.targets", TARGETS),
    Check("lora.dropout", within(0, 1, hi_open=True)),
)


def _weights_computed(block: str):
  def when(cfg) -> bool:
    found = lookup(cfg, f"{block}.domain_weights_from")
    return found is not None and bool(found[1])
  return when


# A block whose weights are computed (from entropies) must not also list them.
WEIGHT_SOURCE_CHECKS = tuple(
    Check(f"{b}.domain_weights", Rule(lambda x: not _values(x), "empty"),
          f"{b}.domain_weights_from computes the weights", _weights_computed(b))
    for b in TRAIN_BLOCKS)


def _lagrangian(cfg) -> bool:
  found = lookup(cfg, "prune.learned.size_control")
  return found is not None and found[1] == "lagrangian"


CHECKS = tuple(Check(f"{b}.{c.path}", c.rule, c.why, c.when)
               for b in TRAIN_BLOCKS for c in BLOCK_CHECKS) + WEIGHT_SOURCE_CHECKS + (
    Check("seed", count(0)),
    # model
    Check("model.compute_dtype", one_of(COMPUTE_DTYPES)),
    Check("model.param_dtype", one_of(PARAM_DTYPES)),
    Check("model.attention_impl", one_of(ATTENTION_IMPLS)),
    Check("model.remat", one_of(REMAT_POLICIES)),
    Check("model.family", one_of(FAMILIES)),
    # data
    Check("data.stream", one_of(STREAMS)),
    Check("data.corpus", one_of(CORPORA)),
    Check("data.seq_len", count(2), "a row needs a token and the token after it"),
    Check("data.max_domain_mb", at_least(0), "0 takes everything"),
    # pruning
    Check("prune.method", one_of(PRUNE_METHODS)),
    Check("prune.learned.constraint", one_of(CONSTRAINTS)),
    Check("prune.learned.size_control", one_of(SIZE_CONTROLS)),
    Check("prune.learned.gate_forward", one_of(GATE_FORWARDS)),
    Check("prune.learned.mask_init", one_of(MASK_INITS)),
    Check("prune.learned.mask_lr", above(0), "at 0 the mask logits never move"),
    # Either sign climbs the multipliers' gradient (jshear.optim); 0 never moves them, so
    # nothing holds the masks to the target.
    Check("prune.learned.lambda_lr", NONZERO, "at 0 the Lagrange multipliers never move",
          when=_lagrangian),
    Check("prune.learned.log_alpha_bounds", BOUNDS),
    Check("prune.learned.mask_init_spread", above(0)),
    Check("prune.learned.mask_init_band", within(0, 0.5, hi_open=True)),
    Check("prune.learned.mask_init_band_width", above(0)),
    Check("prune.learned.target_warmup_steps", count(0)),
    Check("prune.learned.settle_steps", count(0)),
    Check("prune.layerchop.layout", one_of(LAYERCHOP_LAYOUTS)),
    Check("prune.layerchop.width", one_of(LAYERCHOP_WIDTHS)),
    Check("prune.calib.rows", count(1)),
    Check("prune.calib.batch", count(1)),
    Check("prune.layerchop.every", count(0), "0 drops the layers all at once"),
    Check("prune.dimchop.every", count(1)),
    Check("prune.dimchop.end_fraction", within(0, 1, lo_open=True)),
    Check("prune.dimchop.straight_through", within(0, 1)),
    *(Check(f"prune.target.{k}", count(0), "0 keeps the source's size")
      for k in ("num_layers", "num_heads", "num_kv_heads", "hidden_size", "intermediate_size")),
    # distillation
    Check("distill.temperature", above(0)),
    Check("distill.first_fraction", within(0, 1, lo_open=True)),
    Check("distill.weight", at_least(0)),
    Check("distill.lm_weight", at_least(0)),
    Check("distill.hidden_weight", at_least(0)),
    # LoRA trains adapters on a frozen trained model: not the pruning stage's masks and
    # weights, nor a model that starts from random weights.
    Check("prune.lora.rank", OFF, "the pruning stage trains its masks and the weights, not "
          "adapters; set continued.lora.rank for LoRA recovery"),
    Check("pretrain.lora.rank", OFF, "pretraining starts from random weights, which LoRA "
          "would freeze; set continued.lora.rank to adapt a trained model"),
    # export
    Check("export.dtype", one_of(EXPORT_DTYPES), '"" keeps the params\' dtype'),
    # growth (whether factor or target_layers fits the source's depth: the grow stage's
    # validate, which knows the source)
    Check("grow.operator", one_of(GROW_OPERATORS)),
    Check("grow.factor", count(0), "0: from grow.target_layers"),
    Check("grow.target_layers", count(0), "0: from grow.factor"),
    # blockwise local distillation
    Check("blockwise.mode", one_of(BLOCKWISE_MODES)),
    Check("blockwise.rows_per_domain", count(1)),
    Check("blockwise.record_batch_size", count(1)),
    Check("blockwise.nmse_eps", above(0)),
    # its optimizer keys: the training blocks' rules
    *(Check(f"blockwise.{c.path}", c.rule, c.why) for c in BLOCK_CHECKS
      if c.path in ("steps", "batch_size", "lr", "schedule", "warmup_steps",
                    "final_lr_fraction", "weight_decay", "b1", "b2", "eps", "clip_norm",
                    "ckpt_every")),
)


def occurrence_checks(cfg) -> tuple:
  """The checks of a block's own per-occurrence copies in `cfg` (`pretrain_2` for the second
  listing of pretrain): the same rules under the copy's name."""
  names = [k for k in (cfg.keys() if hasattr(cfg, "keys") else ())
           if re.fullmatch(r"(.+)_([2-9])", k) and k.rsplit("_", 1)[0] in cfg]
  return tuple(Check(f"{n}{c.path[len(b):]}", c.rule, c.why)
               for n in names for b in [n.rsplit("_", 1)[0]]
               for c in CHECKS if c.path.startswith(b + ".") and c.when is None)


# ---- lookup and the check ----------------------------------------------------------------

def _has(node, key) -> bool:
  try:
    return key in node
  except TypeError:
    return False


def _blocks(node):
  """(name, value) of the sub-blocks (mappings) of `node`."""
  try:
    items = list(node.items())
  except (AttributeError, TypeError):
    return []
  return [(k, v) for k, v in items if hasattr(v, "items") and hasattr(v, "keys")]


def lookup(cfg, path: str):
  """(actual dotted path, value) of `path` in `cfg`, or None when it is not there. A key
  missing at its place is looked for one level down (in that block's sub-blocks)."""
  node, done = cfg, []
  parts = path.split(".")
  for i, key in enumerate(parts):
    if _has(node, key):
      node = node[key]
      done.append(key)
      continue
    rest = ".".join(parts[i:])
    for name, sub in _blocks(node):
      found = _lookup_exact(sub, rest)
      if found is not None:
        return ".".join(done + [name, rest]), found[0]
    return None
  return ".".join(done), node


def _lookup_exact(node, path: str):
  for key in path.split("."):
    if not _has(node, key):
      return None
    node = node[key]
  return (node,)


def problems(cfg, checks=CHECKS) -> list[str]:
  """One message per failed check (keys the config does not have are skipped)."""
  out = []
  for c in checks:
    if c.when is not None and not c.when(cfg):
      continue
    found = lookup(cfg, c.path)
    if found is None:
      continue
    where, value = found
    if hasattr(value, "to_dict"):  # a ConfigDict: show it as a plain dict
      value = value.to_dict()
    if not c.rule.ok(value):
      out.append(f"config.{where}={value!r} must be {c.rule.text}"
                 + (f" ({c.why})" if c.why else ""))
  return out


def check(cfg) -> None:
  """Raises a JShearError naming every bad key (one line, `; `-separated)."""
  bad = problems(cfg, CHECKS + occurrence_checks(cfg))
  if bad:
    raise JShearError("; ".join(bad))
