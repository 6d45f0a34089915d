"""The prune block grouped by method: prune.learned, .layerchop, .dimchop and .calib hold
the knobs only some methods read; a knob set (away from its default) for a method the run
does not use is refused before anything is written, naming the method(s) that read it."""

import os
import subprocess
import sys

import pytest

import tiny_world
from configs import compare_demo, demo
from jshear.config_base import base_config, for_method, train_block, unread_knobs
from jshear.errors import JShearError
from jshear.train.stages.choosers import PRUNE_METHODS, check_knobs, prune_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MASK_KEYS = ("mask_lr", "lambda_lr", "schedule_masks", "clip_masks", "settle_steps")

@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return tiny_world.build(tmp_path_factory.mktemp("world"))


def test_the_layout():
  p = base_config().prune
  for block, keys in {
      "learned": ("constraint", "size_control", "log_alpha_bounds", "mask_init",
                  "mask_init_spread", "mask_init_band", "mask_init_band_width",
                  "mask_init_band_groups", "gate_forward", "target_warmup_steps") + MASK_KEYS,
      "layerchop": ("layout", "width", "every"),
      "dimchop": ("every", "end_fraction", "straight_through"),
      "calib": ("rows", "batch")}.items():
    assert sorted(p[block].keys()) == sorted(keys), block
    assert not any(k in p for k in keys), block  # none left flat
  for k in ("method", "groups", "target", "one_schedule", "steps", "lr", "schedule"):
    assert k in p


def test_continued_and_pretrain_carry_no_mask_keys():
  c = base_config()
  for block in (c.continued, c.pretrain, train_block()):
    assert [k for k in MASK_KEYS if k in block] == []
    assert not any(k in block for k in ("learned", "layerchop", "dimchop", "calib"))


def test_another_methods_knob_is_refused_naming_its_reader():
  c = base_config()
  c.prune.layerchop.layout = "input"
  assert unread_knobs(c) == [
      "config.prune.layerchop.layout='input' is read only by prune.method=layerchop (this run "
      "uses learned); remove it or switch method"]
  c.prune.method = "layerchop"
  assert unread_knobs(c) == []

  c = base_config()
  c.prune.method, c.prune.learned.mask_lr, c.prune.dimchop.every = "magnitude", 0.1, 3
  (a, b) = unread_knobs(c)
  assert a.startswith("config.prune.learned.mask_lr=0.1 is read only by prune.method=learned "
                      "(this run uses magnitude)")
  assert b.startswith("config.prune.dimchop.every=3 is read only by prune.method=dimchop")
  with pytest.raises(JShearError) as err:
    check_knobs(c)
  assert "\n" not in str(err.value) and str(err.value) == "; ".join([a, b])


def test_calibration_rows_are_refused_where_nothing_scores_importance():
  c = base_config()
  c.prune.calib.rows = 4                      # learned with uniform init: no scores
  (msg,) = unread_knobs(c)
  assert msg.startswith("config.prune.calib.rows=4 is read only by prune.method=importance or "
                        "dimchop, learned with prune.learned.mask_init=importance and "
                        "layerchop with prune.layerchop.width=importance (this run uses "
                        "learned with prune.learned.mask_init=uniform)")
  c.prune.learned.mask_init = "importance"
  assert unread_knobs(c) == []
  for method, ok in (("importance", True), ("dimchop", True), ("magnitude", False),
                     ("random", False)):
    c = base_config()
    c.prune.method, c.prune.calib.batch = method, 2
    assert (unread_knobs(c) == []) == ok, method
  c = base_config()
  c.prune.method, c.prune.calib.batch = "layerchop", 2
  assert unread_knobs(c) == []
  c.prune.layerchop.width = "magnitude"
  assert len(unread_knobs(c)) == 1


def test_a_knob_back_at_its_default_counts_as_unset():
  c = base_config()
  c.prune.method = "importance"
  c.prune.learned.log_alpha_bounds = list(base_config().prune.learned.log_alpha_bounds)
  c.prune.layerchop.layout = "max_gap"
  assert unread_knobs(c) == []


def test_shipped_configs_and_their_method_variants_pass():
  for method in PRUNE_METHODS:
    c = demo.get_config(method)
    assert c.prune.method == method and unread_knobs(c) == [], method
  assert demo.get_config("magnitude").prune.learned.mask_lr == 1.0  # the recipe dropped
  assert demo.get_config("dimchop").prune.calib.rows == 16          # kept: dimchop reads it
  assert for_method(demo.get_config(), "learned").to_dict() == demo.get_config().to_dict()


def test_compare_gives_each_method_only_its_own_knobs():
  from jshear.experiments import compare
  cfg = compare_demo.get_config()
  cfg.prune.dimchop.every = 5
  cfg.compare.methods = cfg.compare.methods + ",layerchop:input"
  for name, method, layout in compare.parse_methods(cfg.compare.methods):
    c = compare.method_config(cfg, method, layout)
    if method != "scratch":
      assert unread_knobs(c) == [], name
  learned = compare.method_config(cfg, "learned", None)
  assert learned.prune.learned.mask_lr == 0.1 and learned.prune.dimchop.every == 10
  assert compare.method_config(cfg, "dimchop", None).prune.dimchop.every == 5
  assert compare.method_config(cfg, "importance", None).prune.learned.mask_lr == 1.0


def test_prune_spec_refuses_before_the_method_validates(world):
  from jshear.model_io import read_model_config
  cfg = tiny_world.config(world)
  cfg.prune.dimchop.straight_through = 0.5
  with pytest.raises(JShearError, match=r"config\.prune\.dimchop\.straight_through=0\.5 is "
                                        r"read only by prune\.method=dimchop"):
    prune_spec(cfg, read_model_config(world["hf"]))


def test_cli_refuses_another_methods_knob_and_writes_nothing(world, tmp_path):
  path = tiny_world.write_prune_config(world, tmp_path / "cfg.py")
  w = str(tmp_path / "w")
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "jshear.train", f"--config={path}",
                      f"--workdir={w}", "--config.prune.layerchop.layout=input"],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
  assert "Traceback" not in r.stderr, r.stderr
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and r.stderr.strip().splitlines()[-1] == errors[0], r.stderr
  assert ("config.prune.layerchop.layout='input' is read only by prune.method=layerchop "
          "(this run uses learned); remove it or switch method") in errors[0]
  assert not os.path.exists(os.path.join(w, "config.json"))
  assert not os.path.isdir(w) or os.listdir(w) == []
