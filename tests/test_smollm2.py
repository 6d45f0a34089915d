"""The real model: SmolLM2-135M (fetched and converted by `make setup`)."""

import numpy as np
import pytest
import torch
import transformers

from jshear import assets
from jshear.convert.hf_import import read_hf_params
from jshear.model.transformer import forward
from jshear.model.loss import nll_sum


@pytest.fixture(scope="module")
def smollm2():
  path = assets.smollm2_hf_dir()
  cfg, params = read_hf_params(path)
  tok = transformers.AutoTokenizer.from_pretrained(path)
  with open(assets.heldout_text_path()) as f:
    ids = np.asarray(tok(f.read()).input_ids[:512], np.int32)[None]
  return path, cfg, params, ids


def test_config_is_smollm2(smollm2):
  _, cfg, _, _ = smollm2
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
          cfg.intermediate_size, cfg.vocab_size, cfg.tie_embeddings, cfg.rope_theta) == (
              30, 576, 9, 3, 64, 1536, 49152, True, 100000.0)


def test_loss_matches_transformers(smollm2):
  path, cfg, params, ids = smollm2
  logits = forward(params, ids, cfg=cfg)
  s, n = nll_sum(logits, {"tokens": ids})
  ours = float(s / n)
  model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  with torch.no_grad():
    ref = float(model(torch.as_tensor(ids, dtype=torch.long),
                      labels=torch.as_tensor(ids, dtype=torch.long)).loss)
  assert abs(ours - ref) / ref <= 1e-4, (ours, ref)
  assert 2.5 < ours < 3.3  # perplexity ~18.8 on this text, as measured when it was fetched
