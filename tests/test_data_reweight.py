import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import logging
import math

import numpy as np
import pytest

from jshear.data import reweight
from jshear.data.reweight import DynamicBatchLoading, reference_losses, scaling_law_ref_loss, update_weights
from jshear.data.upsample import upsampled_weights
from jshear.errors import JShearError

W = {"a": 0.5, "b": 0.5}
L = {"a": 2.0, "b": 1.0}
REF = {"a": 1.0, "b": 1.5}  # excess: a +1.0, b -0.5
E = math.e


def _close(got, want):
  assert list(got) == list(want)
  np.testing.assert_allclose(list(got.values()), list(want.values()), rtol=1e-12, atol=1e-15)


def test_rules_match_hand_computed_values():
  # Paper: only positive excess counts; w * exp(delta), renormalised.
  _close(update_weights("sheared", W, L, REF), {"a": E / (E + 1), "b": 1 / (E + 1)})
  # Reference code: signed excess in a softmax, then smoothed with c / k.
  s = E**1.0 + E**-0.5
  c = 1e-4
  _close(update_weights("sheared_code", W, L, REF),
         {"a": (1 - c) * E / s + c / 2, "b": (1 - c) * E**-0.5 / s + c / 2})
  # DoReMi: clipped excess times eta, then mixed with uniform c.
  eta, c = 2.0, 0.01
  _close(update_weights("doremi", W, L, REF, eta=eta, c=c),
         {"a": (1 - c) * E**2 / (E**2 + 1) + c / 2, "b": (1 - c) / (E**2 + 1) + c / 2})
  _close(update_weights("constant", W, L, REF), W)
  _close(DynamicBatchLoading("sheared", REF)(W, L), update_weights("sheared", W, L, REF))


def _simplex(w):
  v = np.asarray(list(w.values()))
  assert np.all(np.isfinite(v)) and np.all(v >= 0) and abs(v.sum() - 1) < 1e-12


@pytest.mark.parametrize("rule", reweight.RULES)
def test_huge_excess_and_equal_losses_stay_on_simplex(rule):
  w = {"a": 0.2, "b": 0.3, "c": 0.5}
  ref = {"a": 1.0, "b": 1.0, "c": 1.0}
  huge = update_weights(rule, w, {"a": 1e300, "b": 1.0, "c": -1e300}, ref)
  _simplex(huge)
  if rule != "constant":
    assert huge["a"] > 0.99
  same = update_weights(rule, w, {"a": 1.5, "b": 1.5, "c": 1.5}, ref)  # equal excess: no preference
  _simplex(same)
  c = {"sheared": 0, "sheared_code": 1e-4, "doremi": 1e-3, "constant": 0}[rule]
  _close(same, {d: (1 - c) * x + c / 3 for d, x in w.items()})


def test_domain_without_eval_data_is_held_fixed(caplog):
  w = {"a": 0.2, "b": 0.3, "c": 0.5}
  ref = {"a": 1.0, "b": 1.0, "c": 1.0}
  with caplog.at_level(logging.WARNING):
    got = update_weights("sheared", w, {"a": 2.0, "b": 1.0, "c": 1.0}, ref, eval_counts={"a": 4, "b": 4, "c": 0})
  assert "['c']" in caplog.text
  _simplex(got)
  assert got["c"] == 0.5  # held exactly; a and b share the other half
  _close(got, {"a": 0.5 * 0.4 * E / (0.4 * E + 0.6), "b": 0.5 * 0.6 / (0.4 * E + 0.6), "c": 0.5})
  for bad in (float("nan"), float("inf")):
    got = update_weights("sheared_code", w, {"a": 2.0, "b": bad, "c": 1.0}, ref)
    _simplex(got)
    assert got["b"] == 0.3
  _close(update_weights("sheared", w, {}, ref), w)  # nothing measured: nothing changes


def test_bad_inputs_raise():
  with pytest.raises(JShearError, match="rule"):
    update_weights("nope", W, L, REF)
  with pytest.raises(JShearError, match="missing"):
    update_weights("sheared", W, L, {"a": 1.0})
  with pytest.raises(JShearError, match="weights"):
    update_weights("sheared", {"a": -1.0, "b": 2.0}, L, REF)


def test_reference_losses():
  assert reference_losses("paper", "1.3B")["github"] == 0.7459
  assert set(reweight.REFERENCE_LOSSES["370M"]) == set(reweight.PAPER_DOMAINS)
  for table in reweight.INITIAL_WEIGHTS.values():
    assert abs(sum(table.values()) - 1) < 1e-3 and set(table) == set(reweight.PAPER_DOMAINS)
  assert reference_losses("source", {"a": 2}) == {"a": 2.0}
  _close(scaling_law_ref_loss({"a": (100.0, 0.5, 1.5), "b": (8.0, 1.0, 0.0)}, 1e4), {"a": 2.5, "b": 8e-4})
  assert reference_losses("scaling_law", {"a": (100.0, 0.5, 1.5)}, n_params=1e4) == {"a": 2.5}
  for args in (("paper", "7B"), ("given", {"a": float("nan")}), ("scaling_law", {"a": (1, 1, 1)}), ("x", {})):
    with pytest.raises(JShearError):
      reference_losses(*args)


def test_upsampling_only_in_the_last_fraction():
  w = {"a": 0.5, "b": 0.25, "c": 0.25}
  assert upsampled_weights(w, 89, 100, 0.1, {"b": 3.0}) == w
  _close(upsampled_weights(w, 90, 100, 0.1, {"b": 3.0}), {"a": 0.5 / 1.5, "b": 0.75 / 1.5, "c": 0.25 / 1.5})
  with pytest.raises(JShearError, match="unknown"):
    upsampled_weights(w, 95, 100, 0.1, {"z": 2.0})
  with pytest.raises(JShearError):
    upsampled_weights(w, 95, 100, 1.5, {"a": 2.0})
