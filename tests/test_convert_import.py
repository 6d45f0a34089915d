"""import-hf keeps the exact bits of every stored dtype through its fast paths (blocked
transposes, background writes), and a failed write leaves nothing behind."""

import os
import time

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.torch import load_file as load_torch

import hf_tiny
from jshear import model_io
from jshear.convert import hf_names
from jshear.convert.hf_export import export_model_dir
from jshear.convert.hf_import import import_hf
from jshear.convert.hf_names import transpose_2d
from jshear.eval.testing import tiny_cfg
from jshear.model.params import fuse_layers

_NP = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: ml_dtypes.bfloat16}


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16, np.float32, np.float64,
                                   np.int8])
@pytest.mark.parametrize("shape", [(0, 3), (1, 8), (8, 1), (5, 7), (17, 64), (40, 24), (33, 16),
                                   (100, 48), (37, 40)])  # bands of several 16-row blocks
def test_transposed_moves_exact_bits(dtype, shape):
  # Random bytes: NaN payloads and denormals must survive too.
  size = np.dtype(dtype).itemsize
  raw = np.random.default_rng(0).integers(0, 256, (*shape, size), dtype=np.uint8)
  w = raw.view(dtype).reshape(shape)
  for src in (w, w[:, ::2]):  # also a non-contiguous input
    t = transpose_2d(src)
    assert t.dtype == src.dtype and t.shape == src.shape[::-1] and t.flags.c_contiguous
    assert t.tobytes() == np.ascontiguousarray(src.T).tobytes()


def _bits(x):
  return np.ascontiguousarray(x).tobytes()


@pytest.mark.parametrize("family,dtype", [("llama", torch.bfloat16), ("llama", torch.float16),
                                          ("parallel", torch.bfloat16)])
def test_import_keeps_exact_bits(tmp_path, family, dtype):
  config = hf_tiny.llama_config() if family == "llama" else hf_tiny.cohere_config()
  model = hf_tiny.build(config).to(dtype)
  hf_dir = tmp_path / "hf"
  model.save_pretrained(hf_dir, max_shard_size="20KB")  # several shards
  assert os.path.exists(hf_dir / "model.safetensors.index.json")
  src = {k: v.contiguous().view(torch.int16).numpy().view(_NP[dtype])
         for k, v in model.state_dict().items()}
  ckpt = import_hf(str(hf_dir), str(tmp_path / "ckpt"))
  cfg, params = model_io.load_model(ckpt)

  # Expected values straight from the layout table, with numpy's own (slow) copies.
  for part, name in hf_names.global_table(cfg).items():
    want = hf_names.to_jshear(cfg, part, src[name])
    assert params[part].dtype == want.dtype and _bits(params[part]) == _bits(want), part
  layers = {part: np.stack([hf_names.to_jshear(cfg, part, src[hf_names.hf_layer_name(i, suffix)])
                            for i in range(cfg.num_layers)])
            for part, suffix in hf_names.layer_table(cfg).items()}
  if cfg.family == "parallel":
    layers = fuse_layers(cfg, layers, xp=np)
  assert sorted(layers) == sorted(params["layers"])
  for part, want in layers.items():
    got = params["layers"][part]
    assert got.dtype == want.dtype and _bits(got) == _bits(want), part

  if family == "llama":  # and back out: the same tensors, bit for bit
    out = export_model_dir(ckpt, str(tmp_path / "export"))
    dst = load_torch(os.path.join(out, "model.safetensors"))
    assert sorted(dst) == sorted(model.state_dict())
    for k, v in model.state_dict().items():
      assert dst[k].dtype == dtype and torch.equal(dst[k].view(torch.int16),
                                                   v.view(torch.int16)), k


def test_failed_import_waits_for_writes_in_flight(tmp_path):
  """A write still running when the import fails must finish before the temp dir is removed;
  otherwise it recreates files there after cleanup."""
  cfg = tiny_cfg(vocab=1 << 16, hidden_size=512)  # 128 MiB embedding (f32)
  big = np.ones((cfg.vocab_size, cfg.hidden_size), np.float32)
  out = tmp_path / "m"
  with pytest.raises(RuntimeError, match="boom"):
    with model_io.model_writer(str(out), cfg, {n: np.float32 for n in
                                               model_io._flat_shapes(cfg)}) as w:
      w.write("embed", big)
      raise RuntimeError("boom")
  time.sleep(0.5)  # give a stray write time to land
  assert os.listdir(tmp_path) == []
