"""LayerCHOP: depth pruning to a target layer count by a fixed layout (CHOP, Figure 5).

The first and the last layer are always kept; the dropped layers are chosen among the inner
layers 1 .. L-2 by one of these layouts (n = layers to drop):

  max_gap  spread the dropped layers evenly over the inner layers, as far apart as possible
           (dropping half of the layers drops every other layer)
  input    the n layers right after the first:          1 .. n
  output   the n layers right before the last:          L-1-n .. L-2
  middle   a block of n centred in the inner layers (one layer nearer the input when it
           cannot be exactly centred)
  both     ceil(n/2) right after the first and floor(n/2) right before the last

The result is a `layer` mask [L] (1 keep, 0 drop): a zeroed layer is skipped exactly, and
`jshear.prune.finalize` slices it away like any other method's masks. CHOP found dropping all
at once as good as or better than one at a time, so that is the default; with
prune.layerchop.every > 0 the same layers go one at a time while the prune stage trains
(`jshear.prune.iterative`).
"""

from __future__ import annotations

import numpy as np

from jshear.config_check import LAYERCHOP_LAYOUTS as LAYOUTS  # noqa: F401 (defined there)
from jshear.errors import JShearError


def dropped_layers(num_layers: int, target_layers: int, layout: str) -> list[int]:
  """Sorted indices of the layers that `layout` drops to go from num_layers to target_layers."""
  L, keep = int(num_layers), int(target_layers)
  if layout not in LAYOUTS:
    raise JShearError(f"prune.layerchop.layout={layout!r} (known: {list(LAYOUTS)})")
  if keep > L:
    raise JShearError(f"target.num_layers={keep} exceeds the source model's num_layers={L}")
  n = L - keep
  if n == 0:
    return []
  if keep < 2:
    raise JShearError(f"target.num_layers={keep}: LayerCHOP always keeps the first and the last "
                      f"layer, so the target needs at least 2 layers (source has {L})")
  inner = L - 2  # candidates 1 .. L-2; n <= inner holds because keep >= 2
  if layout == "input":
    drop = range(1, 1 + n)
  elif layout == "output":
    drop = range(L - 1 - n, L - 1)
  elif layout == "middle":
    start = 1 + (inner - n) // 2
    drop = range(start, start + n)
  elif layout == "both":
    n_in = n - n // 2
    drop = list(range(1, 1 + n_in)) + list(range(L - 1 - n // 2, L - 1))
  else:  # max_gap: the k-th dropped layer sits at the centre of the k-th of n equal slices
    drop = [1 + (2 * k + 1) * inner // (2 * n) for k in range(n)]
  drop = sorted(int(i) for i in drop)
  assert len(set(drop)) == n and 0 not in drop and L - 1 not in drop, (L, keep, layout, drop)
  return drop


def layer_mask(num_layers: int, target_layers: int, layout: str) -> np.ndarray:
  """0/1 float32 `layer` mask of shape [num_layers]."""
  m = np.ones((num_layers,), np.float32)
  m[dropped_layers(num_layers, target_layers, layout)] = 0.0
  return m


def layer_scores(num_layers: int, target_layers: int, layout: str) -> np.ndarray:
  """The layout as `layer` scores (kept 1, dropped 0), for `masks_from_scores`: its top-k
  global rule keeps exactly the layout's layers (ties go to the lower index, and there are
  exactly target_layers ones)."""
  return layer_mask(num_layers, target_layers, layout)
