"""Activation importance: the instrumented forward is the model's forward, the scores equal
a reference computed by hand from Hugging Face's own model (torch hooks), scores are cached,
and the `importance` method reaches the target with a model transformers loads."""

import jax
import numpy as np
import pytest
import torch
import transformers

import hf_tiny
import tiny_world
from jshear.config_base import reset_unread_blocks
from jshear.convert.hf_import import read_hf_params
from jshear.model.config import ModelConfig
from jshear.model.params import param_shapes
from jshear.model.transformer import forward
from jshear.prune import importance
from jshear.train.pipeline import run

def tiny(family):
  """A small random model built in numpy (no per-leaf jit compiles: fast on a busy CPU)."""
  cfg = ModelConfig(vocab_size=96, hidden_size=48, intermediate_size=64, num_layers=3,
                    num_heads=6, num_kv_heads=3, head_dim=8, family=family,
                    qk_norm=family == "parallel", tie_embeddings=family == "parallel")
  rng = np.random.default_rng(0)
  shapes = param_shapes(cfg)
  params = jax.tree_util.tree_map_with_path(
      lambda p, s: (1.0 + 0.3 * rng.standard_normal(s) if "norm" in jax.tree_util.keystr(p)
                    else 0.2 * rng.standard_normal(s)).astype(np.float32),
      shapes, is_leaf=lambda x: isinstance(x, tuple))
  return cfg, params


SEG = np.array([[1] * 7 + [2] * 5, [1] * 12, [1] * 9 + [0] * 3])


@pytest.mark.parametrize("family", ["llama", "parallel"])
def test_instrumented_forward_equals_forward(family):
  from jshear.data.shards import positions_from_segments
  cfg, params = tiny(family)
  tok = np.random.default_rng(1).integers(0, cfg.vocab_size, SEG.shape).astype(np.int32)
  pos = positions_from_segments(SEG)
  want = jax.jit(lambda p: forward(p, tok, cfg=cfg, positions=pos, segment_ids=SEG))(params)
  got, stats = jax.jit(lambda p: importance.instrumented_forward(
      p, tok, cfg=cfg, positions=pos, segment_ids=SEG))(params)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)
  L, B = cfg.num_layers, SEG.shape[0]
  assert stats["head"].shape == (L, B, cfg.num_heads)
  assert stats["kv"].shape == (L, B, cfg.num_kv_heads)
  assert stats["intermediate"].shape == (L, B, cfg.intermediate_size)
  assert stats["norms"].shape == (L, B, 2 if family == "llama" else 1, cfg.hidden_size)


def _hf_reference(model, tokens, valid, H, Dh, KV):
  """Scores by hand from HF's model: hooks catch the o_proj / down_proj inputs, the norm
  outputs and every decoder layer's input and output."""
  caught = {}

  def keep(name, what):
    def hook(mod, args, kwargs, out):
      x = args[0] if args else kwargs["hidden_states"]
      caught.setdefault(name, []).append((x if what == "in" else out).detach().double().numpy())
    return hook

  hooks = []
  for l, layer in enumerate(model.model.layers):
    hooks.append(layer.self_attn.o_proj.register_forward_hook(keep(("ctx", l), "in"), with_kwargs=True))
    hooks.append(layer.mlp.down_proj.register_forward_hook(keep(("act", l), "in"), with_kwargs=True))
    hooks.append(layer.input_layernorm.register_forward_hook(keep(("norm", l, 0), "out"), with_kwargs=True))
    hooks.append(layer.post_attention_layernorm.register_forward_hook(keep(("norm", l, 1), "out"), with_kwargs=True))
    hooks.append(layer.register_forward_hook(keep(("in", l), "in"), with_kwargs=True))
    hooks.append(layer.register_forward_hook(keep(("out", l), "out"), with_kwargs=True))
  hooks.append(model.model.norm.register_forward_hook(keep(("final",), "out"), with_kwargs=True))
  with torch.no_grad():
    model(torch.as_tensor(tokens, dtype=torch.long))
  for h in hooks:
    h.remove()
  c = {k: v[0] for k, v in caught.items()}
  w = valid.astype(np.float64)

  def agg(a):  # a [B, T, n]: mean over valid tokens, then L2 over the batch
    m = (a * w[..., None]).sum(1) / w.sum(1)[:, None]
    return np.sqrt((m ** 2).sum(0))

  L = len(model.model.layers)
  B, T = tokens.shape
  out = {"head": [], "kv": [], "intermediate": [], "layer": []}
  hidden = agg(np.abs(c[("final",)]))
  for l in range(L):
    ctx = c[("ctx", l)].reshape(B, T, H, Dh)
    out["head"].append(agg(np.linalg.norm(ctx, axis=-1)))
    out["kv"].append(agg(np.linalg.norm(ctx.reshape(B, T, KV, -1), axis=-1)))
    out["intermediate"].append(agg(np.abs(c[("act", l)])))
    hidden = hidden + agg(np.abs(c[("norm", l, 0)])) + agg(np.abs(c[("norm", l, 1)]))
    a, b = c[("in", l)], c[("out", l)]
    cos = (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    out["layer"].append(1 - (cos * w).sum() / w.sum())
  out = {k: np.asarray(v) for k, v in out.items()}
  out["hidden"] = hidden
  return out


def test_scores_match_hand_computed_reference(tmp_path):
  config = hf_tiny.llama_config(kv=2, layers=3, hidden=32, heads=4, head_dim=8, inter=48)
  model = hf_tiny.build(config)
  model.save_pretrained(tmp_path / "hf")
  cfg, params = read_hf_params(str(tmp_path / "hf"))
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, config.vocab_size, (5, 10)).astype(np.int32)
  seg = np.ones_like(tokens)
  seg[1, 7:] = 0  # tail padding counts for nothing
  seg[4, 4:] = 0
  rows = np.stack([tokens, seg], axis=1)
  got = importance.compute_scores(cfg, params, rows, batch_size=2)  # 3 batches, one padded
  want = _hf_reference(model, tokens, seg != 0, 4, 8, 2)
  for g in ("head", "kv", "intermediate", "hidden", "layer"):
    np.testing.assert_allclose(got[g], want[g], rtol=2e-4, atol=1e-5, err_msg=g)


# ---- on the tiny world ----------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return tiny_world.build(tmp_path_factory.mktemp("world"))


def test_calibration_rows_are_the_first_rows_of_each_domain(world):
  from jshear.data.mixture import domain_sources
  rows = importance.calibration_rows(world["data"], 2)
  src = domain_sources(world["data"], "train")
  want = [np.asarray(src[d][i]) for d in sorted(src) for i in range(2)]
  np.testing.assert_array_equal(rows, np.stack(want))


def test_scores_are_cached(world, tmp_path, monkeypatch):
  cfg, params = read_hf_params(world["hf"])
  path = str(tmp_path / "scores.npz")
  a = importance.cached_scores(path, cfg, params, world["data"], 2, 4)
  monkeypatch.setattr(importance, "compute_scores", lambda *a, **k: pytest.fail("recomputed"))
  b = importance.cached_scores(path, cfg, params, world["data"], 2, 4)
  for g in importance.SCORE_GROUPS:
    np.testing.assert_array_equal(a[g], b[g])
  monkeypatch.undo()
  c = importance.cached_scores(path, cfg, params, world["data"], 3, 4)  # other settings
  assert not np.array_equal(a["head"], c["head"])
  # Same shape and settings, other weights (e.g. a later stage's): the cache misses.
  other = jax.tree.map(lambda x: np.asarray(x) * 1.5, params)
  d = importance.cached_scores(path, cfg, other, world["data"], 3, 4)
  assert not np.array_equal(c["head"], d["head"])
  e = importance.cached_scores(path, cfg, params, world["data"], 3, 4)
  np.testing.assert_array_equal(c["head"], e["head"])


def test_importance_method_reaches_target_and_exports(world, tmp_path):
  cfg = tiny_world.config(world)  # target (3, 2, 1, 32, 48) with layer,kv,intermediate,hidden
  cfg.stages, cfg.prune.method, cfg.final_eval = "prune,finalize,export", "importance", False
  reset_unread_blocks(cfg)  # the tiny world's learned knobs
  cfg.prune.calib.rows = 4
  summary = run(cfg, str(tmp_path / "imp"))
  scores = np.load(tmp_path / "imp" / "scores.npz")
  masks = np.load(tmp_path / "imp" / "masks" / "binary_masks.npz")
  # The lowest-BI layer is the one dropped; the top-32 hidden channels are the ones kept.
  assert masks["layer"][np.argmin(scores["layer"])] == 0 and masks["layer"].sum() == 3
  np.testing.assert_array_equal(np.sort(np.nonzero(masks["hidden"])[0]),
                                np.sort(np.argsort(-scores["hidden"], kind="stable")[:32]))
  hf = transformers.AutoModelForCausalLM.from_pretrained(summary["hf_dir"])
  c = hf.config
  assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.hidden_size,
          c.intermediate_size) == (3, 2, 1, 32, 48)
  tok = transformers.AutoTokenizer.from_pretrained(summary["hf_dir"])
  ids = tok("the license", return_tensors="pt").input_ids
  assert hf.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def test_parallel_family_scores_reach_the_target():
  """Cohere/CHOP blocks: scores for every group, masks of the target shape, and the sliced
  model computes what the masked model computes."""
  from jshear.prune.baselines import masks_from_scores
  from jshear.prune.finalize import finalize
  from jshear.prune.targets import TargetShape
  cfg, params = tiny("parallel")  # 3 layers, 6 heads / 3 kv, hidden 48, intermediate 64
  rows = np.stack([SEG, SEG], axis=1)
  rows[:, 0] = np.random.default_rng(2).integers(0, cfg.vocab_size, SEG.shape)
  s = importance.compute_scores(cfg, params, rows, batch_size=2)
  groups = ("layer", "kv", "head", "intermediate", "hidden")
  target = TargetShape(2, 2, 2, 24, 32)
  masks = masks_from_scores(cfg, {g: s[g] for g in groups}, target)
  assert masks["layer"][np.argmin(s["layer"])] == 0
  new_cfg, new_params = finalize(cfg, params, masks)
  assert (new_cfg.num_layers, new_cfg.num_heads, new_cfg.num_kv_heads, new_cfg.hidden_size,
          new_cfg.intermediate_size) == (2, 2, 2, 24, 32)
  tok = rows[:, 0]
  want = jax.jit(lambda p: forward(p, tok, masks, cfg=cfg))(params)
  got = jax.jit(lambda p: forward(p, tok, cfg=new_cfg))(new_params)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)
