"""LayerCHOP: every layout drops exactly the layers it names, never the first or last, and
the pipeline turns it into a target-shaped model that transformers loads."""

import numpy as np
import pytest
import transformers

import tiny_world
from jshear.config_base import reset_unread_blocks
from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.prune import layerchop
from jshear.prune.baselines import masks_from_scores
from jshear.prune.targets import TargetShape
from jshear.train.pipeline import run

# (source layers, target layers, layout) -> dropped layers, written out by hand.
CASES = [
    (12, 6, "input", [1, 2, 3, 4, 5, 6]),
    (12, 6, "output", [5, 6, 7, 8, 9, 10]),
    (12, 6, "middle", [3, 4, 5, 6, 7, 8]),
    (12, 6, "both", [1, 2, 3, 8, 9, 10]),
    (12, 6, "max_gap", [1, 3, 5, 6, 8, 10]),
    (9, 5, "max_gap", [1, 3, 5, 7]),          # half of the inner layers: every other one
    (10, 7, "both", [1, 2, 8]),               # odd count: the extra one on the input side
    (10, 7, "middle", [3, 4, 5]),             # off-centre by one: nearer the input
    (10, 7, "max_gap", [2, 5, 7]),
    (30, 20, "max_gap", [2, 5, 8, 10, 13, 16, 19, 22, 24, 27]),
    (5, 2, "middle", [1, 2, 3]),              # everything inner goes
    (6, 6, "input", []),
]


@pytest.mark.parametrize("L,keep,layout,want", CASES)
def test_layout_drops_exactly_these_layers(L, keep, layout, want):
  got = layerchop.dropped_layers(L, keep, layout)
  assert got == want
  m = layerchop.layer_mask(L, keep, layout)
  assert m.sum() == keep and m[0] == 1 and m[-1] == 1
  assert np.nonzero(m == 0)[0].tolist() == want


@pytest.mark.parametrize("layout", layerchop.LAYOUTS)
def test_first_and_last_are_never_dropped(layout):
  for L in range(2, 26):
    for keep in range(2, L + 1):
      drop = layerchop.dropped_layers(L, keep, layout)
      assert len(drop) == len(set(drop)) == L - keep, (L, keep, drop)
      assert all(0 < i < L - 1 for i in drop), (L, keep, drop)


def test_max_gap_spreads_evenly():
  # Gaps between consecutive dropped layers differ by at most one.
  for L, keep in ((24, 12), (30, 20), (17, 9), (32, 24)):
    d = layerchop.dropped_layers(L, keep, "max_gap")
    gaps = np.diff(d)
    assert gaps.max() - gaps.min() <= 1, (L, keep, d)


@pytest.mark.parametrize("L,keep,pattern", [
    (8, 9, "exceeds the source model's num_layers=8"),
    (8, 1, "at least 2 layers"),
    (8, 0, "at least 2 layers"),
])
def test_bad_targets_are_clear_errors(L, keep, pattern):
  with pytest.raises(JShearError, match=pattern):
    layerchop.dropped_layers(L, keep, "input")


def test_unknown_layout():
  with pytest.raises(JShearError, match=r"layerchop\.layout='gaps'"):
    layerchop.dropped_layers(8, 4, "gaps")


def test_scores_give_the_same_masks():
  cfg = ModelConfig(vocab_size=96, hidden_size=48, intermediate_size=64, num_layers=6,
                    num_heads=6, num_kv_heads=3, head_dim=8)
  t = TargetShape(4, cfg.num_heads, cfg.num_kv_heads, cfg.hidden_size, cfg.intermediate_size)
  for layout in layerchop.LAYOUTS:
    m = masks_from_scores(cfg, {"layer": layerchop.layer_scores(6, 4, layout)}, t)
    np.testing.assert_array_equal(m["layer"], layerchop.layer_mask(6, 4, layout))


# ---- through the pipeline -------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return tiny_world.build(tmp_path_factory.mktemp("world"))


def _shape(hf):
  c = hf.config
  return (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.hidden_size,
          c.intermediate_size)


def test_pipeline_layerchop_depth_only_exports(world, tmp_path):
  cfg = tiny_world.config(world, num_layers=2, num_heads=4, num_kv_heads=2, hidden_size=64,
                          intermediate_size=96)
  cfg.stages, cfg.prune.method, cfg.final_eval = "prune,finalize,export", "layerchop", False
  reset_unread_blocks(cfg)  # the tiny world's learned knobs
  cfg.prune.groups = "layer"
  cfg.prune.layerchop.layout, cfg.prune.layerchop.width = "middle", "none"
  summary = run(cfg, str(tmp_path / "lc"))
  masks = np.load(tmp_path / "lc" / "masks" / "binary_masks.npz")
  np.testing.assert_array_equal(masks["layer"], [1, 0, 0, 1])
  hf = transformers.AutoModelForCausalLM.from_pretrained(summary["hf_dir"])
  assert _shape(hf) == (2, 4, 2, 64, 96)
  # A depth-only prune is the source with two blocks skipped: same embeddings, layer 3 -> 1.
  src = transformers.AutoModelForCausalLM.from_pretrained(world["hf"])
  a = src.model.layers[3].mlp.down_proj.weight.detach().numpy()
  b = hf.model.layers[1].mlp.down_proj.weight.detach().numpy()
  np.testing.assert_array_equal(a, b)

  # A workdir written before newer config fields existed (here: the distill block and the
  # one-shot prune fields) still resumes: fields missing there count as their defaults.
  import json
  path = tmp_path / "lc" / "config.json"
  old = json.loads(path.read_text())
  del old["distill"]
  del old["prune"]["calib"]
  path.write_text(json.dumps(old))
  assert run(cfg, str(tmp_path / "lc"))["final_params"] == summary["final_params"]


def test_pipeline_layerchop_with_importance_widths(world, tmp_path):
  cfg = tiny_world.config(world)  # target (3, 2, 1, 32, 48)
  cfg.stages, cfg.prune.method, cfg.final_eval = "prune,finalize,export", "layerchop", False
  reset_unread_blocks(cfg)  # the tiny world's learned knobs
  cfg.prune.layerchop.layout = "input"
  summary = run(cfg, str(tmp_path / "lcw"))
  masks = np.load(tmp_path / "lcw" / "masks" / "binary_masks.npz")
  np.testing.assert_array_equal(masks["layer"], [1, 0, 1, 1])
  assert (tmp_path / "lcw" / "scores.npz").exists()
  hf = transformers.AutoModelForCausalLM.from_pretrained(summary["hf_dir"])
  assert _shape(hf) == (3, 2, 1, 32, 48)


@pytest.mark.parametrize("change,pattern", [
    (lambda c: c.prune.layerchop.update(layout="edges"), r"layerchop\.layout='edges'"),
    (lambda c: c.prune.layerchop.update(width="none"), "prunes depth only"),
    (lambda c: c.prune.target.update(num_layers=1), "at least 2 layers"),
])
def test_pipeline_refuses_bad_layerchop_config(world, tmp_path, change, pattern):
  cfg = tiny_world.config(world)
  cfg.prune.method = "layerchop"
  reset_unread_blocks(cfg)  # the tiny world's learned knobs
  change(cfg)
  with pytest.raises(JShearError, match=pattern):
    run(cfg, str(tmp_path / "bad"))
