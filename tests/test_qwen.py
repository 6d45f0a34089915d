"""Qwen-family sources: Qwen2/2.5 (q/k/v biases, tied, GQA) and Qwen3 (shared per-head q/k
RMSNorm, GQA, explicit head_dim). Exact import/export against transformers, masks == sliced
model, pruned exports that transformers loads, and refusal of an enabled sliding window."""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers

from jshear.config_base import reset_unread_blocks
from jshear import sharding as shd
from jshear.convert.hf_export import export_hf
from jshear.convert.hf_import import import_hf, read_hf_params
from jshear.errors import JShearError
from jshear.model.config import ModelConfig
from jshear.model.params import param_axes
from jshear.model.transformer import forward
from jshear.prune import importance
from jshear.prune.baselines import magnitude_scores, masks_from_scores
from jshear.prune.deterministic import deterministic_masks
from jshear.prune.finalize import finalize
from jshear.prune.state import init_prune_state
from jshear.prune.targets import TargetShape, target_config
from test_hf_parity import _check_model

ROPE = {"rope_type": "default", "rope_theta": 1e6}


def qwen2_config(**kw):
  """Qwen2.5-0.5B-like: tied, GQA 6/2, head_dim = hidden / heads, q/k/v biases."""
  base = dict(vocab_size=128, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
              num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256,
              rms_norm_eps=1e-6, tie_word_embeddings=True, rope_parameters=ROPE,
              bos_token_id=1, eos_token_id=2)
  base.update(kw)
  return transformers.Qwen2Config(**base)


def qwen3_config(**kw):
  """Qwen3-like: untied, GQA 6/2, head_dim 12 != hidden / heads = 8, q/k norms."""
  base = dict(vocab_size=128, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
              num_attention_heads=6, num_key_value_heads=2, head_dim=12,
              max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
              rope_parameters=ROPE, bos_token_id=1, eos_token_id=2)
  base.update(kw)
  return transformers.Qwen3Config(**base)


CONFIGS = {"qwen2": qwen2_config, "qwen3": qwen3_config}


def build(config, seed=0):
  """Random model with non-trivial norm weights and biases (HF starts them at 1 and 0)."""
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.5 * torch.randn_like(p))
  return model


def hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


TOKENS = np.random.default_rng(0).integers(0, 128, (2, 20)).astype(np.int32)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def source(request, tmp_path_factory):
  """(kind, HF model, jshear cfg, params as numpy)."""
  model = build(CONFIGS[request.param]())
  hf_dir = tmp_path_factory.mktemp(request.param) / "hf"
  model.save_pretrained(hf_dir)
  cfg, params = read_hf_params(str(hf_dir))
  return request.param, model, cfg, params


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_matches_transformers_and_exports_bitwise(tmp_path, kind):
  """Random and packed batches <= 1e-4 fp32; export -> reload bitwise, same architecture."""
  model = build(CONFIGS[kind]())
  _check_model(tmp_path, model)
  cfg = ModelConfig.from_hf_dir(str(tmp_path / "hf"))
  assert cfg.qkv_bias == (kind == "qwen2") and cfg.qk_norm == (kind == "qwen3")
  assert cfg.head_dim == (12 if kind == "qwen3" else 8)


def test_sharded_safetensors_both_ways(tmp_path):
  model = build(qwen2_config(tie_word_embeddings=False))
  hf_dir = tmp_path / "hf"
  model.save_pretrained(hf_dir, max_shard_size="20KB")
  assert os.path.exists(hf_dir / "model.safetensors.index.json")
  cfg, params = read_hf_params(str(hf_dir))
  out = export_hf(cfg, params, str(tmp_path / "out"), max_shard_bytes=20_000)
  with open(os.path.join(out, "model.safetensors.index.json")) as f:
    names = json.load(f)["weight_map"]
  assert "model.layers.0.self_attn.k_proj.bias" in names
  back = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
  np.testing.assert_array_equal(hf_logits(back, TOKENS), hf_logits(model, TOKENS))


def _soft_masks(cfg, target, groups, seed=3):
  """Soft kept values at exactly the target counts (as a learned run would end)."""
  state = init_prune_state(cfg, target, groups, jax.random.key(seed))
  keys = jax.random.split(jax.random.key(seed + 1), len(state.log_alpha))
  la = {g: 3.0 * jax.random.normal(k, v.shape) for k, (g, v) in zip(keys, state.log_alpha.items())}
  return deterministic_masks(state.replace(log_alpha=la), cfg, target)


GROUPS = ("layer", "head", "kv", "intermediate", "hidden")
TARGET = TargetShape(2, 2, 1, 36, 40)  # hidden 36 != 2 heads x head_dim: Qwen configs allow it


def test_masked_equals_finalized_and_exports(source, tmp_path):
  """Head, KV-group, intermediate, layer and hidden masks (soft values): the sliced model
  computes the masked model's logits, and transformers loads it with the target shape."""
  kind, _, cfg, params = source
  masks = _soft_masks(cfg, TARGET, GROUPS)
  masked = np.asarray(forward(params, TOKENS, masks, cfg=cfg))
  new_cfg, new_params = finalize(cfg, params, masks)
  assert new_cfg == target_config(cfg, TARGET).replace(tie_embeddings=new_cfg.tie_embeddings)
  dense = np.asarray(forward(new_params, TOKENS, cfg=new_cfg))
  np.testing.assert_allclose(dense, masked, atol=1e-5, rtol=0)

  hf = transformers.AutoModelForCausalLM.from_pretrained(
      export_hf(new_cfg, new_params, str(tmp_path / kind))).float().eval()
  assert type(hf).__name__ == {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[kind]
  c = hf.config
  assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.hidden_size,
          c.intermediate_size, c.head_dim) == (2, 2, 1, 36, 40, cfg.head_dim)
  assert sum(p.numel() for p in hf.parameters()) == sum(
      np.size(x) for x in jax.tree.leaves(new_params))
  np.testing.assert_allclose(hf_logits(hf, TOKENS), dense, atol=1e-4, rtol=0)


def _drop_group_in_hf(model, drop):
  """A transformers model with KV group drop[l] of layer l removed by hand: its q/k/v rows
  and biases and its query heads' o_proj columns (q/k norms, shared by all heads, stay)."""
  c = model.config
  H, KV, Dh = c.num_attention_heads, c.num_key_value_heads, model.model.layers[0].self_attn.head_dim
  G = H // KV
  new = CONFIGS[c.model_type](num_attention_heads=H - G, num_key_value_heads=KV - 1, head_dim=Dh)
  sd = {k: v.clone() for k, v in model.state_dict().items()}
  for l, g in enumerate(drop):
    q_rows = [i for i in range(H * Dh) if i // Dh // G != g]
    kv_rows = [i for i in range(KV * Dh) if i // Dh != g]
    pre = f"model.layers.{l}.self_attn."
    for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
      for what in ("weight", "bias"):
        if pre + f"{name}.{what}" in sd:
          sd[pre + f"{name}.{what}"] = sd[pre + f"{name}.{what}"][rows]
    sd[pre + "o_proj.weight"] = sd[pre + "o_proj.weight"][:, q_rows]
  out = transformers.AutoModelForCausalLM.from_config(new).float().eval()
  missing, unexpected = out.load_state_dict(sd, strict=False)
  assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
  out.tie_weights()
  return out


def test_kv_group_mask_equals_removing_the_group(source):
  kind, model, cfg, params = source
  drop = [1, 0, 1]  # a different group per layer; still one dense shape
  kv = np.ones((cfg.num_layers, cfg.num_kv_heads), np.float32)
  kv[np.arange(cfg.num_layers), drop] = 0.0
  masked = np.asarray(forward(params, TOKENS, {"kv": kv}, cfg=cfg))
  edited = _drop_group_in_hf(model, drop)
  np.testing.assert_allclose(masked, hf_logits(edited, TOKENS), atol=1e-4, rtol=0)
  # The same edit through jshear's finalize.
  new_cfg, new_params = finalize(cfg, params, {"kv": kv})
  np.testing.assert_allclose(np.asarray(forward(new_params, TOKENS, cfg=new_cfg)), masked,
                             atol=1e-5, rtol=0)


def test_scorers_rank_and_slice_qwen_params(source):
  """Importance (also DimCHOP's scorer) and magnitude scores reach the target, and the sliced
  model equals the masked one; magnitude counts each bias with its head / KV group."""
  kind, _, cfg, params = source
  rows = np.stack([TOKENS, np.ones_like(TOKENS)], axis=1)
  groups = GROUPS
  for scores in (importance.compute_scores(cfg, params, rows, batch_size=2),
                 magnitude_scores(cfg, params, groups)):
    masks = masks_from_scores(cfg, {g: scores[g] for g in groups}, TARGET)
    new_cfg, new_params = finalize(cfg, params, masks)
    np.testing.assert_allclose(np.asarray(forward(new_params, TOKENS, cfg=new_cfg)),
                               np.asarray(forward(params, TOKENS, masks, cfg=cfg)), atol=1e-5)
  if kind == "qwen2":
    base = magnitude_scores(cfg, params, ("head", "kv"))
    lp = dict(params["layers"], bq=params["layers"]["bq"].copy(), bk=params["layers"]["bk"].copy())
    lp["bq"][0, 4] *= 10
    lp["bk"][1, 0] *= 10
    moved = magnitude_scores(cfg, dict(params, layers=lp), ("head", "kv"))
    changed = lambda g: set(zip(*np.nonzero(~np.isclose(base[g], moved[g]))))
    assert changed("head") == {(0, 4)}
    assert changed("kv") == {(0, 1), (1, 0)}  # a group owns its query heads too


def test_new_params_have_axes_and_shard(source):
  kind, _, cfg, params = source
  axes = param_axes(cfg)
  is_axes = lambda x: isinstance(x, tuple)
  assert jax.tree.structure(axes, is_leaf=is_axes) == jax.tree.structure(params)
  jax.tree.map(lambda a, p: None if len(a) == p.ndim else pytest.fail(f"{a} vs {p.shape}"),
               axes, params, is_leaf=is_axes)
  assert cfg.num_params() == sum(np.size(x) for x in jax.tree.leaves(params))
  mesh = shd.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  sharded = jax.device_put(params, shd.tree_shardings(params, axes, mesh))
  name = "bq" if kind == "qwen2" else "q_norm"
  spec = sharded["layers"][name].sharding.spec
  assert tuple(spec)[:2] == ((None, "tensor") if kind == "qwen2" else (None, None))
  with jax.set_mesh(mesh):
    got = jax.jit(lambda p: forward(p, TOKENS, cfg=cfg))(sharded)
  np.testing.assert_allclose(np.asarray(got), np.asarray(forward(params, TOKENS, cfg=cfg)),
                             atol=1e-5)


# ---- sliding windows ------------------------------------------------------------------

def _long_tokens():
  return np.random.default_rng(5).integers(0, 128, (1, 40)).astype(np.int32)


@pytest.mark.parametrize("how", ["max_window_layers", "layer_types"])
def test_enabled_sliding_window_is_refused(tmp_path, how):
  kw = dict(use_sliding_window=True, sliding_window=8)
  kw.update(max_window_layers=1) if how == "max_window_layers" else kw.update(
      layer_types=["full_attention", "sliding_attention", "full_attention"])
  model = build(qwen2_config(**kw))
  # It does change attention: transformers' logits move once sequences pass the window.
  plain = build(qwen2_config())
  toks = _long_tokens()
  assert np.max(np.abs(hf_logits(model, toks) - hf_logits(plain, toks))) > 1e-3
  model.save_pretrained(tmp_path / "hf")
  out = tmp_path / "ckpt"
  with pytest.raises(JShearError, match=r"use_sliding_window=true, sliding_window=8 .*layer_types"):
    import_hf(str(tmp_path / "hf"), str(out))  # transformers always writes layer_types
  assert not out.exists()
  # A config.json without layer_types: max_window_layers decides, and is named.
  hf = {k: v for k, v in model.config.to_dict().items() if k != "layer_types"}
  hf["max_window_layers"] = 1
  with pytest.raises(JShearError, match="max_window_layers makes layers \\[1, 2\\]"):
    ModelConfig.from_hf_dict(hf)


def test_sliding_window_that_changes_nothing_is_accepted(tmp_path):
  # use_sliding_window with no sliding layer (Qwen2.5's released configs look like this).
  model = build(qwen2_config(use_sliding_window=True, sliding_window=8, max_window_layers=3))
  model.save_pretrained(tmp_path / "hf")
  cfg, params = read_hf_params(str(tmp_path / "hf"))
  toks = _long_tokens()
  np.testing.assert_allclose(np.asarray(forward(params, toks, cfg=cfg)), hf_logits(model, toks),
                             atol=1e-4, rtol=0)
  for flags in (dict(use_sliding_window=False, sliding_window=8),
                dict(use_sliding_window=True, sliding_window=256, max_window_layers=0)):
    hf = qwen2_config(**flags).to_dict()
    ModelConfig.from_hf_dict(hf)  # no error


# ---- the pipeline and the example config ------------------------------------------------

def test_prune_qwen_config_fits_qwen_shapes():
  from configs import prune_qwen
  from jshear.prune.targets import validate_target
  c = prune_qwen.get_config()
  assert c.model.source == ""  # given on the command line
  qwen25 = ModelConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
                       num_heads=14, num_kv_heads=2, head_dim=64, qkv_bias=True,
                       tie_embeddings=True)
  t = c.prune.target
  validate_target(qwen25, TargetShape(t.num_layers, t.num_heads, t.num_kv_heads, t.hidden_size,
                                      t.intermediate_size), c.prune.groups.split(","))
  # The Qwen3-0.6B overrides its docstring gives.
  qwen3 = ModelConfig(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_layers=28,
                      num_heads=16, num_kv_heads=8, head_dim=128, qk_norm=True, tie_embeddings=True)
  validate_target(qwen3, TargetShape(20, 12, 6, 768, 2048),
                  ("layer", "kv", "intermediate", "hidden"))
  assert "Qwen3-0.6B" in prune_qwen.__doc__ and "num_kv_heads=6" in prune_qwen.__doc__


def test_pipeline_prunes_distills_and_exports_a_qwen_source(tmp_path):
  """DimCHOP (importance re-scoring while training), finalize, continued pretraining with
  distillation from the source, export: a Qwen2 source ends as a Qwen2ForCausalLM."""
  import tiny_world
  from jshear.train.pipeline import run
  world = tiny_world.build(tmp_path / "world")
  config = qwen2_config(vocab_size=256, hidden_size=64, num_attention_heads=4,
                        num_key_value_heads=2, num_hidden_layers=4, intermediate_size=96,
                        bos_token_id=2, eos_token_id=3)
  build(config).save_pretrained(world["hf"])  # replaces the LLaMA; the tokenizer stays
  cfg = tiny_world.config(world)  # target (3, 2, 1, 32, 48): layer, kv, intermediate, hidden
  cfg.stages, cfg.prune.method = "prune,finalize,continue,export", "dimchop"
  reset_unread_blocks(cfg)  # the tiny world's learned knobs
  cfg.prune.dimchop.every, cfg.prune.calib.rows = 2, 2
  cfg.continued.steps, cfg.continued.eval_every, cfg.continued.ckpt_every = 2, 0, 2
  cfg.distill.update(enable=True, teachers="source")
  summary = run(cfg, str(tmp_path / "run"))
  hf = transformers.AutoModelForCausalLM.from_pretrained(summary["hf_dir"])
  c = hf.config
  assert type(hf).__name__ == "Qwen2ForCausalLM"
  assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.hidden_size,
          c.intermediate_size) == (3, 2, 1, 32, 48)
  assert hf.model.layers[0].self_attn.k_proj.bias.shape == (16,)
