"""Blockwise local distillation (Puzzle's "BLD"): before any global training, every block of
a pruned model learns on its own to map the source model's residual stream at the start of
its span to the stream at the span's end.

Spans. A pruned model keeps source layers k_0 < k_1 < ... (finalize's layer map). Student
block j replaces source layers [k_j, k_{j+1}): a dropped layer merges into the span of the
kept layer before it, and layers dropped before k_0 into the first span (which then starts
at the embedding). So block j's input is the stream after source layer start_j - 1 (the
embedding for j = 0) and its target the stream after the last layer of its span.

Coordinates. Recorded streams are the source's, restricted to the kept hidden channels and
multiplied by the hidden mask's values there: finalize folds those values into the pruned
model's embedding and residual-branch outputs, so the pruned model's own stream lives in
these coordinates and a trained block drops back in without rescaling.

Recording streams to one `.npy` memory map per boundary ([rows, T, D_kept]), a chunk of rows
at a time; `progress.json` says how many rows are complete, so a killed recording resumes.

Training. Blocks are independent, so one block's step is the one train step
(`jshear.train.step.build_step`) with the normalised MSE sum((y_s - y_t)^2) / (sum(y_t^2) +
eps) as its loss, and all blocks train at once as `vmap` of that step over a leading block
axis, sharded over the devices (padded to ceil(blocks / devices) slots a device,
`device_assignment`). Clipping, AdamW and skipped steps act per block, as
if each were trained alone.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jshear.atomic import write_json
from jshear.config_check import BLOCKWISE_MODES as MODES  # defined there
from jshear.errors import JShearError
from jshear.model import layers as L
from jshear.model.config import ModelConfig
from jshear.model.transformer import block_fn, causal_attend, forward
from jshear.optim import Group

ROW_KEYS = ("tokens", "segment_ids", "positions")
# the per-block state leaves `mlp_only` trains (the sequential family's MLP and its norm)
MLP_LEAVES = ("mlp_norm", "w_gate", "w_up", "w_down")


def spans(num_source_layers: int, kept_layers) -> list[tuple[int, int]]:
  """[(start, end)) of source layers each kept layer's block replaces."""
  kept = [int(k) for k in kept_layers]
  if not kept or kept != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= num_source_layers:
    raise JShearError(f"blockwise: kept layers {kept} are not increasing indices into "
                      f"{num_source_layers} source layers")
  starts = [0] + kept[1:]
  ends = kept[1:] + [num_source_layers]
  return list(zip(starts, ends))


def boundary_sources(block_spans) -> list[int]:
  """For each of the len(spans) + 1 boundaries, the source layer whose output it is
  (-1: the embedding)."""
  return [block_spans[0][0] - 1] + [end - 1 for _, end in block_spans]


def _boundaries(cfg: ModelConfig, params, rows: dict, sources, keep, scale):
  """[n_boundaries, B, T, D_kept] float32 streams of the source model for one batch."""
  _, hidden = forward(params, rows["tokens"], cfg=cfg, positions=rows["positions"],
                      segment_ids=rows["segment_ids"], return_hidden=True)
  embed = jnp.take(params["embed"], rows["tokens"], axis=0)
  streams = jnp.stack([embed if s < 0 else hidden[s] for s in sources]).astype(jnp.float32)
  streams = jnp.take(streams, keep, axis=-1)
  return streams if scale is None else streams * scale


def _chunks(n: int, size: int):
  return [(i, min(i + size, n)) for i in range(0, n, size)]


def record(cfg: ModelConfig, params, rows: dict, block_spans, out_dir: str, *,
           hidden_keep=None, hidden_scale=None, batch_size: int = 8, progress=None) -> dict:
  """Record the source's streams at every boundary for `rows` ({tokens, segment_ids,
  positions}: [N, T] int arrays) into out_dir; resumes where a killed run stopped.
  hidden_keep: kept hidden channels (None: all); hidden_scale: the hidden mask's values at
  them (None: ones). Returns the recording's meta record."""
  rows = {k: np.asarray(rows[k]) for k in ROW_KEYS}
  n, t = rows["tokens"].shape
  keep = np.arange(cfg.hidden_size) if hidden_keep is None else np.asarray(hidden_keep)
  sources = boundary_sources(block_spans)
  meta = {"rows": int(n), "seq_len": int(t), "hidden": int(len(keep)),
          "spans": [list(s) for s in block_spans], "sources": sources,
          "hidden_keep": keep.tolist(),
          "hidden_scale": None if hidden_scale is None else np.asarray(hidden_scale).tolist(),
          "tokens_sum": int(rows["tokens"].sum())}  # which rows, cheaply
  os.makedirs(out_dir, exist_ok=True)
  done = _done_rows(out_dir, meta)
  mode = "r+" if done else "w+"
  maps = [np.lib.format.open_memmap(_boundary_path(out_dir, j), mode=mode, dtype=np.float32,
                                    shape=(n, t, len(keep))) for j in range(len(sources))]
  if not done:
    for k in ROW_KEYS:
      np.save(os.path.join(out_dir, f"{k}.npy"), rows[k])
  scale = None if hidden_scale is None else jnp.asarray(hidden_scale, jnp.float32)
  run = jax.jit(lambda p, r: _boundaries(cfg, p, r, sources, jnp.asarray(keep), scale))
  for lo, hi in _chunks(n, batch_size):
    if hi <= done:
      continue
    out = np.asarray(run(params, {k: jnp.asarray(rows[k][lo:hi]) for k in ROW_KEYS}))
    for j, m in enumerate(maps):
      m[lo:hi] = out[j]
      m.flush()
    write_json(os.path.join(out_dir, "progress.json"), {**meta, "done_rows": hi})
    if progress is not None:
      progress(hi, n)
  return meta


def _boundary_path(out_dir, j):
  return os.path.join(out_dir, f"boundary_{j:03d}.npy")


def _done_rows(out_dir, meta) -> int:
  path = os.path.join(out_dir, "progress.json")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    prev = json.load(f)
  done = prev.pop("done_rows")
  if prev != meta:
    raise JShearError(f"{out_dir}: a recording of other rows, spans or channels is there "
                      "(remove it to record again)")
  return int(done)


class Recording:
  """A finished recording, read a batch of rows at a time from its memory maps."""

  def __init__(self, out_dir: str):
    with open(os.path.join(out_dir, "progress.json")) as f:
      self.meta = json.load(f)
    if self.meta["done_rows"] != self.meta["rows"]:
      raise JShearError(f"{out_dir}: the recording is incomplete "
                        f"({self.meta['done_rows']} of {self.meta['rows']} rows)")
    self.rows = {k: np.load(os.path.join(out_dir, f"{k}.npy")) for k in ROW_KEYS}
    self.maps = [np.load(_boundary_path(out_dir, j), mmap_mode="r")
                 for j in range(len(self.meta["sources"]))]

  @property
  def num_blocks(self) -> int:
    return len(self.maps) - 1

  def batch(self, idx) -> dict:
    """Block-major arrays for rows `idx`: x, y [blocks, B, T, D]; row keys [blocks, B, T]."""
    idx = np.sort(np.asarray(idx))
    streams = np.stack([m[idx] for m in self.maps])
    rows = {k: np.broadcast_to(v[idx], (self.num_blocks,) + v[idx].shape)
            for k, v in self.rows.items()}
    return {"x": streams[:-1], "y": streams[1:], **rows}


def apply_block(cfg: ModelConfig, lp, x, positions, segment_ids):
  """One block of the pruned model on stream x [B, T, D]."""
  rope = L.rope_cos_sin(cfg, positions)
  return block_fn(cfg)(cfg, x, lp, {}, None, rope, causal_attend(cfg, segment_ids))[0]


def nmse(y, target, segment_ids, eps: float = 1e-6):
  """sum((y - t)^2) / (sum(t^2) + eps) over the real (non-padding) positions."""
  w = (segment_ids > 0)[..., None].astype(jnp.float32)
  err = jnp.sum(jnp.square((y.astype(jnp.float32) - target) * w))
  return err / (jnp.sum(jnp.square(target * w)) + eps)


def nmse_loss(cfg: ModelConfig, eps: float = 1e-6):
  """A `build_step` loss for one block: its normalised MSE on the micro-batch (averaged
  over micro-batches). The step reports `lm_loss` as the aux sum over total tokens, so the
  aux is scaled to make that figure the mean normalised MSE."""
  def loss(state, mb, inp):
    y = apply_block(cfg, state["params"], mb["x"], mb["positions"], mb["segment_ids"])
    value = nmse(y, mb["y"], mb["segment_ids"], eps) / inp.grad_accum
    return value, (value * inp.total_tokens, {})
  return loss


def block_groups(cfg: ModelConfig, mode: str) -> tuple:
  """What a block trains: all its weights, or (mlp_only) its MLP and the MLP's norm."""
  if mode not in MODES:
    raise JShearError(f"blockwise.mode must be one of {MODES}, got {mode!r}")
  if mode == "entire_block":
    return (Group("weights", (("params",),), weight_decay=True),)
  if cfg.family != "llama":
    raise JShearError("blockwise.mode='mlp_only' needs the sequential (llama) family: the "
                      "parallel family fuses the MLP's input projection with q, k and v")
  return (Group("weights", tuple(("params", n) for n in MLP_LEAVES), weight_decay=True),)


def stack_states(states: list) -> dict:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def unstack(tree, n: int) -> list:
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]


def device_assignment(n_blocks: int, n_devices: int) -> list[list[int]]:
  """The blocks each device trains when the block axis, padded to ceil(n / devices) slots a
  device, is sharded in contiguous pieces (what XLA does with the sharded vmap). Blocks cost
  the same (one shape), so no assignment can do with fewer slots a device."""
  per = -(-n_blocks // n_devices)
  return [list(range(d * per, min((d + 1) * per, n_blocks))) for d in range(n_devices)]
