"""Mask artefacts in WORKDIR/masks/: what finalize reads and users inspect.

  masks.npz         the masks finalize folds in (learned: kept units at their soft score)
  binary_masks.npz  0/1 versions (layer and channel correspondence for distillation)
  log_alpha.npz     learned gate logits (learned masks only)
  masks.json        target, groups and kept counts per layer
Every file is written through a temporary name, so a killed run leaves none half-written.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from jshear import distributed
from jshear.atomic import atomic_write, write_json


def _savez(path: str, arrays: dict) -> None:
  with atomic_write(path, "wb") as f:
    np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})


def save(workdir: str, spec, masks: dict, log_alpha: dict | None = None) -> dict:
  """Writes the artefacts of `masks` ({group: array}, soft or 0/1); returns `masks`."""
  masks = {g: np.asarray(v, np.float32) for g, v in masks.items()}
  binary = {g: (v != 0).astype(np.float32) for g, v in masks.items()}
  if jax.process_index() == 0:
    d = os.path.join(workdir, "masks")
    os.makedirs(d, exist_ok=True)
    if log_alpha is not None:
      _savez(os.path.join(d, "log_alpha.npz"), log_alpha)
    _savez(os.path.join(d, "binary_masks.npz"), binary)
    kept = {g: v.sum(axis=-1).tolist() for g, v in binary.items()}
    write_json(os.path.join(d, "masks.json"),
               {"target": spec.target.__dict__, "groups": list(spec.groups), "kept": kept})
    _savez(os.path.join(d, "masks.npz"), masks)  # last: finalize looks for this one
  distributed.barrier("masks")
  return masks


def load(workdir: str) -> dict | None:
  path = os.path.join(workdir, "masks", "masks.npz")
  if not os.path.exists(path):
    return None
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def learned_masks(prune_state) -> dict:
  """The deterministic masks of a learned prune state (what its evaluations used)."""
  from jshear.prune.state import eval_masks
  return jax.device_get(eval_masks(prune_state))
