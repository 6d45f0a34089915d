"""Exactness against transformers: import, forward, export, reload, for both families."""

import json
import os

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import hf_tiny
from jshear.convert.hf_export import export_model_dir
from jshear.convert.hf_import import import_hf
from jshear.model_io import load_model
from jshear.model.transformer import forward

LLAMA_CASES = {
    "mha_untied": dict(kv=4),
    "gqa_untied": dict(kv=2),
    "gqa_tied": dict(kv=2, tied=True),
    "gqa_rope_llama3": dict(kv=2, rope_scaling=True),
}
COHERE_CASES = {"gqa_qknorm": dict(kv=2, qk_norm=True), "mha_plain": dict(kv=4, qk_norm=False)}


def _tokens(vocab, shape=(2, 24), seed=0):
  return np.random.default_rng(seed).integers(0, vocab, size=shape, dtype=np.int32)


def _roundtrip(tmp_path, hf_model):
  hf_dir = hf_tiny.save(hf_model, tmp_path / "hf")
  ckpt = import_hf(hf_dir, str(tmp_path / "ckpt"))
  cfg, params = load_model(ckpt)
  return hf_dir, ckpt, cfg, params


def _check_model(tmp_path, hf_model):
  hf_dir, ckpt, cfg, params = _roundtrip(tmp_path, hf_model)
  toks = _tokens(cfg.vocab_size)
  ours = np.asarray(forward(params, toks, cfg=cfg))
  ref = hf_tiny.hf_logits(hf_model, toks)
  assert np.max(np.abs(ours - ref)) <= 1e-4

  # Packed batch: two documents in one row equal running each alone.
  a, b = _tokens(cfg.vocab_size, (1, 10), 1), _tokens(cfg.vocab_size, (1, 14), 2)
  packed = np.concatenate([a, b], axis=1)
  seg = np.array([[1] * 10 + [2] * 14], np.int32)
  pos = np.array([list(range(10)) + list(range(14))], np.int32)
  ours = np.asarray(forward(params, packed, cfg=cfg, positions=pos, segment_ids=seg))
  ref = np.concatenate([hf_tiny.hf_logits(hf_model, a), hf_tiny.hf_logits(hf_model, b)], axis=1)
  assert np.max(np.abs(ours - ref)) <= 1e-4

  # Export and reload: bitwise-equal weights, same logits.
  out = export_model_dir(ckpt, str(tmp_path / "export"))
  src = load_file(os.path.join(hf_dir, "model.safetensors"))
  dst = load_file(os.path.join(out, "model.safetensors"))
  src.pop("lm_head.weight", None) if cfg.tie_embeddings else None
  assert sorted(src) == sorted(dst)
  for k in src:
    assert src[k].dtype == dst[k].dtype and np.array_equal(src[k], dst[k]), k
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
  assert type(reloaded) is type(hf_model)
  np.testing.assert_array_equal(hf_tiny.hf_logits(reloaded, toks), hf_tiny.hf_logits(hf_model, toks))


@pytest.mark.parametrize("case", sorted(LLAMA_CASES))
def test_llama_matches_transformers(tmp_path, case):
  _check_model(tmp_path, hf_tiny.build(hf_tiny.llama_config(**LLAMA_CASES[case])))


@pytest.mark.parametrize("case", sorted(COHERE_CASES))
def test_parallel_matches_cohere(tmp_path, case):
  _check_model(tmp_path, hf_tiny.build(hf_tiny.cohere_config(**COHERE_CASES[case])))


def test_sharded_safetensors_import(tmp_path):
  model = hf_tiny.build(hf_tiny.llama_config())
  hf_dir = tmp_path / "hf"
  model.save_pretrained(hf_dir, max_shard_size="20KB")
  assert os.path.exists(hf_dir / "model.safetensors.index.json")
  cfg, params = load_model(import_hf(str(hf_dir), str(tmp_path / "ckpt")))
  toks = _tokens(cfg.vocab_size)
  ours = np.asarray(forward(params, toks, cfg=cfg))
  assert np.max(np.abs(ours - hf_tiny.hf_logits(model, toks))) <= 1e-4


def test_exported_config_is_a_plain_llama(tmp_path):
  model = hf_tiny.build(hf_tiny.llama_config())
  _, ckpt, _, _ = _roundtrip(tmp_path, model)
  out = export_model_dir(ckpt, str(tmp_path / "export"))
  with open(os.path.join(out, "config.json")) as f:
    cfg = json.load(f)
  assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["dtype"] == "float32"
  assert torch.is_tensor(transformers.LlamaForCausalLM.from_pretrained(out).model.embed_tokens.weight)
