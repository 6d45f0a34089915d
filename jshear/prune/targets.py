"""Target shapes for targeted structured pruning, and their up-front validation.

GQA mapping (groups `kv` [L, KV] and `head` [L, H]):
  * `kv` drops whole KV groups (a K/V head together with all of its query heads).
  * `head` drops query heads. It is constrained to keep the same fraction of every group:
    per layer it keeps src_kv * (target heads per group) heads, and the deterministic mask
    keeps exactly (target heads / target kv) heads inside each kept group.
  * With an MHA source (one query head per KV head) and no `kv` group, `head` is the group
    mask: a dropped head drops its K/V head too (this is the reference's LLaMA2 setup).
So 9 heads / 3 kv -> 6 / 2 is met by `kv` alone (drop one group), 9/3 -> 6/3 by `head` alone
(keep 2 of 3 heads per group), and 9/3 -> 4/2 needs both.

`head_layer` and `mlp` are rejected: a uniform LlamaConfig target cannot express layers that
lost only their attention or only their MLP; `layer` drops whole blocks.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.model.masks import MASK_NAMES

_FIELDS = ("num_layers", "num_heads", "num_kv_heads", "hidden_size", "intermediate_size")
# Groups learned by targeted pruning (see module docstring for why the others are refused).
TARGET_GROUPS = ("layer", "head", "kv", "intermediate", "hidden")


@dataclasses.dataclass(frozen=True)
class TargetShape:
  num_layers: int
  num_heads: int
  num_kv_heads: int
  hidden_size: int
  intermediate_size: int

  @classmethod
  def from_config(cls, cfg: ModelConfig) -> "TargetShape":
    return cls(**{f: getattr(cfg, f) for f in _FIELDS})

  @property
  def group_size(self) -> int:
    return self.num_heads // self.num_kv_heads


def target_config(src: ModelConfig, tgt: TargetShape) -> ModelConfig:
  """The pruned model's config: the source with the target's five shape fields."""
  return src.replace(**{f: getattr(tgt, f) for f in _FIELDS})


def validate_target(src: ModelConfig, tgt: TargetShape, groups: Sequence[str]) -> None:
  """Raise JShearError (before anything compiles) if `groups` cannot prune `src` to `tgt`."""
  groups = tuple(groups)
  for g in groups:
    if g not in MASK_NAMES:
      raise JShearError(f"unknown mask group {g!r} in prune groups (known: {list(MASK_NAMES)})")
    if g not in TARGET_GROUPS:
      raise JShearError(
          f"mask group {g!r} cannot be used for targeted pruning: a uniform LLaMA-shaped target "
          f"cannot drop only the attention or only the MLP of a layer; use 'layer' "
          f"(supported: {list(TARGET_GROUPS)})")
  if len(set(groups)) != len(groups):
    raise JShearError(f"prune groups has duplicates: {list(groups)}")

  for f in _FIELDS:
    v = getattr(tgt, f)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
      raise JShearError(f"target.{f} must be a positive integer, got {v!r}")
    if v > getattr(src, f):
      raise JShearError(f"target.{f}={v} exceeds the source model's {f}={getattr(src, f)}")

  if tgt.num_heads % tgt.num_kv_heads:
    raise JShearError(f"target.num_heads={tgt.num_heads} is not divisible by "
                      f"target.num_kv_heads={tgt.num_kv_heads}")
  if tgt.group_size > src.group_size:
    raise JShearError(
        f"target.num_heads={tgt.num_heads} / target.num_kv_heads={tgt.num_kv_heads} gives "
        f"{tgt.group_size} query heads per KV head, more than the source's {src.group_size} "
        f"({src.num_heads}/{src.num_kv_heads}): pruning keeps whole KV groups, it cannot merge them")

  def need(field, group, why=""):
    raise JShearError(f"target.{field}={getattr(tgt, field)} < source {field}="
                      f"{getattr(src, field)} but {group} is not in prune groups {list(groups)}{why}")

  if tgt.num_layers < src.num_layers and "layer" not in groups:
    need("num_layers", "'layer'")
  if tgt.hidden_size < src.hidden_size and "hidden" not in groups:
    need("hidden_size", "'hidden'")
  if tgt.intermediate_size < src.intermediate_size and "intermediate" not in groups:
    need("intermediate_size", "'intermediate'")
  if tgt.num_kv_heads < src.num_kv_heads and "kv" not in groups:
    if not (src.group_size == 1 and "head" in groups):
      need("num_kv_heads", "'kv'", " (only an MHA source can drop KV heads through 'head')")
  if tgt.group_size < src.group_size and "head" not in groups:
    raise JShearError(
        f"target keeps {tgt.group_size} query heads per KV head (target.num_heads={tgt.num_heads}"
        f", target.num_kv_heads={tgt.num_kv_heads}), fewer than the source's {src.group_size}, "
        f"but 'head' is not in prune groups {list(groups)}")

  # Export constraints, checked now rather than after hours of pruning.
  if src.family == "llama" and tgt.hidden_size % tgt.num_heads:
    raise JShearError(
        f"target.hidden_size={tgt.hidden_size} is not divisible by target.num_heads="
        f"{tgt.num_heads}: transformers' LlamaConfig refuses such a config on export "
        f"(even with head_dim={src.head_dim} given)")


def kept_sizes(src: ModelConfig, tgt: TargetShape, groups: Sequence[str]) -> dict[str, int]:
  """Units each group keeps: per layer for [L, .] groups, in total for `layer` and `hidden`."""
  out = {}
  for g in groups:
    if g == "layer":
      out[g] = tgt.num_layers
    elif g == "hidden":
      out[g] = tgt.hidden_size
    elif g == "intermediate":
      out[g] = tgt.intermediate_size
    elif g == "kv":
      out[g] = tgt.num_kv_heads
    elif g == "head":
      # MHA without `kv`: heads are groups. Otherwise the same fraction of every group.
      mha_groups = src.group_size == 1 and "kv" not in groups
      out[g] = tgt.num_heads if mha_groups else src.num_kv_heads * tgt.group_size
    else:
      raise JShearError(f"mask group {g!r} has no target size (supported: {list(TARGET_GROUPS)})")
  return out


def source_sizes(src: ModelConfig, groups: Sequence[str]) -> dict[str, int]:
  """Units each group has in the source, counted like `kept_sizes`."""
  full = {"layer": src.num_layers, "hidden": src.hidden_size, "head": src.num_heads,
          "intermediate": src.intermediate_size, "kv": src.num_kv_heads}
  for g in groups:
    if g not in full:
      raise JShearError(f"mask group {g!r} has no target size (supported: {list(TARGET_GROUPS)})")
  return {g: full[g] for g in groups}
