"""Non-finite weights are refused where a model is read (`jshear.model_io.load_model`,
`jshear.convert.hf_import`): a NaN or inf in a source makes every training step non-finite
(skipped) and every evaluation NaN, which would otherwise surface only as a silently wrong
result far from its cause."""

from __future__ import annotations

import numpy as np

from jshear.errors import JShearError

_CHUNK = 1 << 24  # elements per isfinite pass: bounds the temporary mask (16 MiB)


def _all_finite(a: np.ndarray) -> bool:
  flat = a.reshape(-1)
  return all(bool(np.isfinite(flat[i:i + _CHUNK]).all()) for i in range(0, flat.size, _CHUNK))


def check_finite(x, name: str, where: str, whole=None):
  """`x` itself when every value is finite; otherwise a JShearError naming tensor `name` of
  `where` and how many of its values are not finite. `whole`: a callable giving the full
  tensor when `x` is one shard of it (the count is then over the whole tensor)."""
  a = np.asarray(x)
  if a.size == 0 or _all_finite(a):
    return x
  full = np.asarray(whole()) if whole is not None else a
  ok = np.isfinite(full)
  bad = int(full.size - np.count_nonzero(ok))
  layers = ""
  if name.startswith("layers.") and full.ndim > 1:  # a jshear leaf stacked over layers
    rows = np.flatnonzero(~ok.reshape(full.shape[0], -1).all(axis=1)).tolist()
    layers = f" (layer{'s' if len(rows) > 1 else ''} {', '.join(map(str, rows))})"
  raise JShearError(f"{name}{layers}: {bad} non-finite value(s) of {full.size} in {where}; "
                    f"the source is corrupt")
