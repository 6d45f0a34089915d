"""One-shot mask choosers: scores as defined, exact target shapes."""

import jax
import numpy as np

from jshear.prune import baselines
from jshear.prune.targets import TargetShape
from test_masks import tiny

GROUPS = ("layer", "kv", "intermediate", "hidden")
TARGET = TargetShape(2, 4, 2, 36, 40)


def test_magnitude_scores_match_hand_computed():
  cfg, params = tiny("llama")
  s = baselines.magnitude_scores(cfg, params, ("head", "kv", "intermediate", "hidden"))
  lp = jax.device_get(params["layers"])
  l, h, i, d = 1, 4, 7, 5
  head = np.sqrt(np.sum(lp["wq"][l, :, h] ** 2) + np.sum(lp["wo"][l, h] ** 2))
  np.testing.assert_allclose(s["head"][l, h], head, rtol=1e-5)
  inter = np.sqrt(np.sum(lp["w_gate"][l, :, i] ** 2) + np.sum(lp["w_up"][l, :, i] ** 2) +
                  np.sum(lp["w_down"][l, i] ** 2))
  np.testing.assert_allclose(s["intermediate"][l, i], inter, rtol=1e-5)
  g = 2  # KV group 2 owns query heads 4, 5 and its own k/v columns
  kv = (np.sum(lp["wk"][l, :, g] ** 2) + np.sum(lp["wv"][l, :, g] ** 2) +
        sum(np.sum(lp["wq"][l, :, q] ** 2) + np.sum(lp["wo"][l, q] ** 2) for q in (4, 5)))
  np.testing.assert_allclose(s["kv"][l, g], np.sqrt(kv), rtol=1e-5)
  hid = np.sum(np.asarray(params["embed"])[:, d] ** 2)
  for name in ("wq", "wk", "wv", "w_gate", "w_up"):
    hid += np.sum(lp[name][:, d] ** 2)
  hid += np.sum(lp["wo"][..., d] ** 2) + np.sum(lp["w_down"][..., d] ** 2)
  np.testing.assert_allclose(s["hidden"][d], np.sqrt(hid), rtol=1e-5)


def test_chosen_masks_keep_exactly_the_target():
  cfg, params = tiny("llama")
  for scores in (baselines.magnitude_scores(cfg, params, GROUPS),
                 baselines.random_scores(cfg, GROUPS, 0)):
    m = baselines.masks_from_scores(cfg, scores, TARGET)
    assert m["layer"].sum() == 2 and m["hidden"].sum() == 36
    assert set(m["kv"].sum(1)) == {2} and set(m["intermediate"].sum(1)) == {40}
  a = baselines.masks_from_scores(cfg, baselines.random_scores(cfg, GROUPS, 0), TARGET)
  b = baselines.masks_from_scores(cfg, baselines.random_scores(cfg, GROUPS, 1), TARGET)
  assert any(not np.array_equal(a[g], b[g]) for g in GROUPS)
