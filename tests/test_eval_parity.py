"""The same requests scored by jshear and by the transformers model it was imported from,
through the same scoring code (both batch layouts, both block families)."""

import numpy as np
import pytest

import hf_tiny
from jshear.convert.hf_import import read_hf_params
from jshear.eval import scoring


@pytest.mark.parametrize("family", ["llama", "cohere"])
def test_jshear_and_transformers_score_alike(tmp_path, family):
  config = hf_tiny.llama_config(kv=2) if family == "llama" else hf_tiny.cohere_config(kv=2)
  model = hf_tiny.build(config)
  hf_dir = hf_tiny.save(model, tmp_path / "hf")
  cfg, params = read_hf_params(hf_dir)
  rng = np.random.default_rng(0)
  enc = []
  for _ in range(6):
    ctx = rng.integers(3, 128, rng.integers(2, 15)).tolist()
    enc += [(ctx, rng.integers(3, 128, rng.integers(1, 5)).tolist()) for _ in range(3)]
  jx = scoring.JaxBackend(cfg, params, max_length=64)
  th = scoring.TorchBackend(model, max_length=64)
  for layout in ("packed", "padded"):
    ll_j, g_j = scoring.score_requests(jx, enc, tokens_per_batch=128, layout=layout, progress=False)
    ll_t, g_t = scoring.score_requests(th, enc, tokens_per_batch=128, layout=layout, progress=False)
    np.testing.assert_allclose(ll_j, ll_t, rtol=1e-5, atol=2e-4, err_msg=layout)
    assert g_j.tolist() == g_t.tolist()
