"""Bad converter input names the problem, exits non-zero and leaves no partial output."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.numpy import load_file, save_file

import hf_tiny
from jshear.convert.__main__ import main


@pytest.fixture()
def hf_dir(tmp_path):
  return hf_tiny.save(hf_tiny.build(hf_tiny.llama_config()), tmp_path / "hf")


def _rewrite(hf_dir, fn):
  path = os.path.join(hf_dir, "model.safetensors")
  tensors = load_file(path)
  fn(tensors)
  save_file(tensors, path, metadata={"format": "pt"})


def _fails(capsys, argv, pattern, out):
  assert main(argv) == 2
  err = capsys.readouterr().err
  assert pattern in err, err
  assert not os.path.exists(out)
  assert not [p for p in os.listdir(os.path.dirname(out)) if ".tmp-" in p]


def test_missing_tensor(tmp_path, hf_dir, capsys):
  _rewrite(hf_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  out = str(tmp_path / "ckpt")
  _fails(capsys, ["import-hf", hf_dir, out], "'model.layers.1.mlp.up_proj.weight' is missing", out)


def test_shape_mismatch(tmp_path, hf_dir, capsys):
  def bad(t):
    t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:16]
  _rewrite(hf_dir, bad)
  out = str(tmp_path / "ckpt")
  _fails(capsys, ["import-hf", hf_dir, out],
         "'model.layers.0.self_attn.k_proj.weight' has shape (16, 64), expected (32, 64)", out)


def test_unsupported_model_type(tmp_path, hf_dir, capsys):
  cfg_path = os.path.join(hf_dir, "config.json")
  with open(cfg_path) as f:
    cfg = json.load(f)
  cfg["model_type"] = "gpt2"
  with open(cfg_path, "w") as f:
    json.dump(cfg, f)
  out = str(tmp_path / "ckpt")
  _fails(capsys, ["import-hf", hf_dir, out], "unsupported model_type 'gpt2'", out)


def test_pickle_refused_unless_allowed(tmp_path, capsys):
  model = hf_tiny.build(hf_tiny.llama_config())
  d = tmp_path / "hf"
  model.save_pretrained(d)
  os.remove(d / "model.safetensors")
  torch.save(model.state_dict(), d / "pytorch_model.bin")
  out = str(tmp_path / "ckpt")
  _fails(capsys, ["import-hf", str(d), out], "--allow-pickle", out)
  assert main(["import-hf", str(d), out, "--allow-pickle"]) == 0
  assert os.path.exists(os.path.join(out, "model_config.json"))


def test_existing_output_needs_overwrite(tmp_path, hf_dir, capsys):
  out = tmp_path / "ckpt"
  out.mkdir()
  (out / "keep.txt").write_text("user data")
  assert main(["import-hf", hf_dir, str(out)]) == 2
  assert "already exists" in capsys.readouterr().err
  assert (out / "keep.txt").read_text() == "user data"
  assert main(["import-hf", hf_dir, str(out), "--overwrite"]) == 0
  assert not (out / "keep.txt").exists()
  exp = tmp_path / "exp"
  exp.mkdir()
  assert main(["export-hf", str(out), str(exp)]) == 2
  assert "already exists" in capsys.readouterr().err


def test_cli_runs_as_module(tmp_path, hf_dir):
  """The real entry point: a non-zero exit and one clear line, no traceback."""
  r = subprocess.run([sys.executable, "-m", "jshear.convert", "export-hf", str(tmp_path / "nope"),
                      str(tmp_path / "out")], capture_output=True, text=True)
  assert r.returncode == 2
  assert "is not a jshear model directory" in r.stderr and "Traceback" not in r.stderr


def test_truncated_safetensors(tmp_path, hf_dir, capsys):
  path = os.path.join(hf_dir, "model.safetensors")
  os.truncate(path, os.path.getsize(path) - 100)
  out = str(tmp_path / "ckpt")
  _fails(capsys, ["import-hf", hf_dir, out], "model.safetensors is not a readable safetensors file", out)


def test_garbled_safetensors_header(tmp_path, hf_dir, capsys):
  with open(os.path.join(hf_dir, "model.safetensors"), "r+b") as f:
    f.write((1 << 40).to_bytes(8, "little"))
  out = str(tmp_path / "ckpt")
  _fails(capsys, ["import-hf", hf_dir, out], "model.safetensors is not a readable safetensors file", out)


def test_unsupported_tensor_dtype(tmp_path, hf_dir, capsys):
  name = "model.layers.1.self_attn.o_proj.weight"
  _rewrite(hf_dir, lambda t: t.update({name: t[name].astype("int32")}))
  out = str(tmp_path / "ckpt")
  _fails(capsys, ["import-hf", hf_dir, out], "has dtype I32; jshear imports F32, BF16", out)
