"""LoRA through the pipeline on the tiny world: continue -> export with adapters, the HF
export holds the merged model (its logits equal the base model's plus the saved adapters'),
an interrupted run resumes to the same model, and bad LoRA settings are refused before
anything is written."""

import json
import os
import time

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import tiny_world
from jshear.convert.hf_import import read_model
from jshear.model import lora
from jshear.model.transformer import forward
from jshear.model_io import load_model
from jshear.train import loop
from jshear.train.pipeline import run

RANK, ALPHA = 4, 8.0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return tiny_world.build(tmp_path_factory.mktemp("world"))


def _config(world):
  cfg = tiny_world.config(world)
  cfg.stages, cfg.final_eval = "continue,export", False
  k = cfg.continued
  k.steps, k.lr, k.warmup_steps, k.ckpt_every, k.eval_every = 4, 3e-2, 0, 2, 2
  k.reweight_rule = "constant"
  k.lora.update(rank=RANK, alpha=ALPHA, dropout=0.05, save_adapters=True)
  return cfg


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("lora"))
  return workdir, run(_config(world), workdir)


def _read_peft(cfg, path):
  """The PEFT-layout adapters back in jshear's layout ({target: {a, b}})."""
  with open(os.path.join(path, "adapter_config.json")) as f:
    peft = json.load(f)
  tensors = load_file(os.path.join(path, "adapter_model.safetensors"))
  from jshear.convert.peft_export import module_names
  shapes = lora.adapter_shapes(cfg, peft["r"], lora.TARGETS)
  out = {}
  for t, mod in module_names(cfg).items():
    a = [tensors[f"base_model.model.model.layers.{i}.{mod}.lora_A.weight"].T
         for i in range(cfg.num_layers)]
    b = [tensors[f"base_model.model.model.layers.{i}.{mod}.lora_B.weight"].T
         for i in range(cfg.num_layers)]
    out[t] = {"a": np.stack(a).reshape(shapes[t]["a"]), "b": np.stack(b).reshape(shapes[t]["b"])}
  return peft, out


def test_the_hf_export_is_the_merged_model_of_base_plus_adapters(world, finished):
  workdir, summary = finished
  hf_dir = summary["hf_dir"]
  cfg, base = read_model(world["hf"])
  peft, ad = _read_peft(cfg, os.path.join(workdir, "adapters"))
  assert peft["r"] == RANK and peft["lora_alpha"] == ALPHA and peft["peft_type"] == "LORA"
  assert sorted(peft["target_modules"]) == sorted(
      ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
  assert all(np.abs(v["b"]).max() > 0 for v in ad.values())  # the adapters trained
  # In torch's layout: merged W = W_base + scale * lora_B @ lora_A.
  merged_hf = load_file(os.path.join(hf_dir, "model.safetensors"))
  base_hf = load_file(os.path.join(world["hf"], "model.safetensors"))
  tensors = load_file(os.path.join(workdir, "adapters", "adapter_model.safetensors"))
  stem = "model.layers.1.self_attn.o_proj"
  want = base_hf[f"{stem}.weight"] + ALPHA / RANK * (
      tensors[f"base_model.model.{stem}.lora_B.weight"] @
      tensors[f"base_model.model.{stem}.lora_A.weight"])
  np.testing.assert_allclose(merged_hf[f"{stem}.weight"], want, atol=1e-6)
  # The exported model's logits in transformers equal the unmerged model's in jshear.
  hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
  toks = np.random.default_rng(0).integers(4, 250, (2, 16)).astype(np.int32)
  with torch.no_grad():
    got = hf(torch.as_tensor(toks, dtype=torch.long)).logits.numpy()
  unmerged = np.asarray(forward(base, toks, cfg=cfg.replace(remat="none"),
                                adapters=lora.Adapters(ad, None, ALPHA / RANK)))
  np.testing.assert_allclose(got, unmerged, atol=1e-5, rtol=0)
  plain = np.asarray(forward(base, toks, cfg=cfg.replace(remat="none")))
  assert np.abs(unmerged - plain).max() > 1e-3
  # The continue stage's model dir holds the same merged weights.
  _, cont = load_model(os.path.join(workdir, "continued"))
  np.testing.assert_array_equal(
      np.asarray(cont["layers"]["wo"][1]).reshape(-1, cfg.hidden_size).T,
      merged_hf[f"{stem}.weight"])
  # In-loop evals scored the adapted model.
  recs = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
  assert any("eval/code/loss" in r for r in recs if r.get("stage") == "continue")


def _interrupt_at(monkeypatch, n):
  calls = []
  real = loop.MixtureLoader.next_batch

  def counted(self):
    calls.append(1)
    if n is not None and len(calls) == n:
      raise KeyboardInterrupt("interrupted by the test")
    return real(self)

  monkeypatch.setattr(loop.MixtureLoader, "next_batch", counted)
  return calls


def test_an_interrupted_lora_run_resumes_to_the_same_model(world, finished, tmp_path,
                                                            monkeypatch):
  """The adapters and their optimizer state are in the checkpoint like any trained state."""
  cfg = _config(world)
  cfg.stages, cfg.continued.lora.save_adapters = "continue", False
  wd = tmp_path / "interrupted"
  _interrupt_at(monkeypatch, 4)  # in step 4, after the step-2 checkpoint
  with pytest.raises(KeyboardInterrupt):
    run(cfg, str(wd))
  deadline = time.time() + 60  # the async save of step 2 lands in the background
  while not (wd / "continue" / "checkpoints" / "2").is_dir() and time.time() < deadline:
    time.sleep(0.5)
  calls = _interrupt_at(monkeypatch, None)
  run(cfg, str(wd))
  assert len(calls) == 2, "the rerun should resume at step 2"
  workdir, _ = finished
  ref = jax.tree.leaves(load_model(os.path.join(workdir, "continued"))[1])
  got = jax.tree.leaves(load_model(str(wd / "continued"))[1])
  for a, b in zip(ref, got):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


C = "--config.continued.lora."


@pytest.mark.parametrize("flags,words", [
    (("--config.prune.lora.rank=4",), ["config.prune.lora.rank=4 must be 0", "continued.lora"]),
    (("--config.stages=continue", C + "rank=32"),
     ["config.continued.lora.rank=32 must be below", "k is 64 x 32", "rank < 32"]),
    (("--config.stages=continue", C + "rank=4", C + "targets=q,lm_head"),
     ["config.continued.lora.targets='q,lm_head' must be a comma-separated subset"]),
], ids=["prune-block", "rank-too-big", "unknown-target"])
def test_bad_lora_settings_are_refused_in_one_line(world, tmp_path, flags, words):
  err = tiny_world.refused(world, tmp_path, *flags)
  for w in words:
    assert w in err, err


def test_forgetting_report_of_a_lora_run(world, finished, tmp_path, capsys):
  """Learned / forgotten on the same test rows as the source, and a LoRA-merged model's
  weight change has at most its adapter's rank in every matrix."""
  from jshear.eval import forgetting
  workdir, _ = finished
  out = tmp_path / "report"
  cont = os.path.join(workdir, "continued")
  assert forgetting.main([f"--source={world['hf']}", f"--continued={cont}",
                          f"--data={world['data']}", "--target=code", f"--out={out}",
                          "--rows=8"]) == 0
  rep = json.loads((out / "forgetting.json").read_text())
  m = rep["models"][cont]
  assert rep["others"] == ["legal", "misc"]
  for side in ("learned", "forgotten"):
    assert np.isfinite(m[side]["mean"]) and m[side]["se"] >= 0
  src, mine = rep["source"]["losses"]["code"]["loss"], m["losses"]["code"]["loss"]
  assert m["learned"]["mean"] == pytest.approx(src - mine, abs=1e-9)
  assert set(m["delta_rank90"]) == set(forgetting.MATRICES)
  assert all(1 <= r <= RANK for v in m["delta_rank90"].values() for r in v), m["delta_rank90"]
  assert "| source |" in (out / "forgetting.md").read_text()
  assert (out / "forgetting.png").exists()
  capsys.readouterr()
  assert forgetting.main([f"--source={world['hf']}", f"--continued={cont}",
                          f"--data={world['data']}", "--target=github", f"--out={out}"]) == 2
  assert "--target='github' is not a domain" in capsys.readouterr().err
