"""lm-eval-harness adapter: its three methods through simple request stand-ins (works without
lm_eval installed), and a tiny local lm-eval task when lm_eval is installed (no hub)."""

import types

import numpy as np
import pytest

from jshear import model_io
from jshear.eval import loader, ppl, scoring, testing
from jshear.eval.lm_eval_adapter import JShearLM
from jshear.eval.generate import generate


def _req(*args):
  return types.SimpleNamespace(args=args)


@pytest.fixture(scope="module")
def lm():
  cfg = testing.tiny_cfg()
  params = testing.tiny_params(cfg)
  tok = testing.CharTokenizer(bos=1, eos=2)
  return JShearLM(loaded=loader.Loaded(cfg, params, tok, "jshear", "tiny"), max_length=32,
                  tokens_per_batch=128)


def test_loglikelihood(lm):
  reqs = [("The sun is a", " star"), ("The sun is a", " moon"), ("x" * 50, " y")]
  out = lm.loglikelihood([_req(*r) for r in reqs], disable_tqdm=True)
  enc = scoring.encode_requests(lm.tokenizer, reqs, 1)
  ll, greedy = scoring.score_requests(lm.backend, enc, layout="padded", progress=False)
  assert [type(o[1]) for o in out] == [bool] * 3
  np.testing.assert_allclose([o[0] for o in out], ll, rtol=1e-5)
  assert [o[1] for o in out] == greedy.tolist()


def test_loglikelihood_rolling_matches_perplexity(lm):
  texts = ["hello world", "a much longer string " * 6]
  out = lm.loglikelihood_rolling([_req(t) for t in texts], disable_tqdm=True)
  for t, v in zip(texts, out):
    ids = [ord(c) for c in t]
    res = ppl.evaluate_domains(lm.loaded.params, lm.loaded.cfg, {"d": [np.array(ids)]},
                               max_len=33, stride=32, prefix_token=1)
    assert v == pytest.approx(-res["d"]["nll_sum"], rel=1e-5)
    assert res["d"]["tokens"] == len(ids)


def test_generate_until(lm):
  prompt = "abc"
  ids = generate(lm.loaded.params, lm.loaded.cfg, [[ord(c) for c in prompt]], max_new_tokens=6,
                 eos_id=2)[0]
  text = "".join(chr(i) for i in ids if i != 2)
  stop = text[3] if len(text) > 3 else "\x00"
  out = lm.generate_until([_req(prompt, {"until": [stop], "max_gen_toks": 6}),
                           _req(prompt, {"max_gen_toks": 6})], disable_tqdm=True)
  expected = text[:text.index(stop)] if stop in text else text
  assert out[0] == expected
  assert out[1] == text


def test_adapter_imports_without_lm_eval():
  import subprocess
  import sys
  code = ("import sys; sys.modules['lm_eval'] = None\n"
          "from jshear.eval import lm_eval_adapter as a\n"
          "assert not a.HAVE_LM_EVAL\n"
          "try:\n  a.register()\nexcept Exception as e:\n  print(type(e).__name__, e)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert "JShearError" in out.stdout and "pip install lm-eval" in out.stdout


def test_lm_eval_simple_evaluate_local_task(tmp_path, monkeypatch):
  lm_eval = pytest.importorskip("lm_eval")
  from lm_eval.tasks import TaskManager
  from jshear.eval.lm_eval_adapter import register
  register()
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  (tmp_path / "data.jsonl").write_text(
      '{"q": "The sun is a", "choices": ["star", "moon"], "label": 0}\n'
      '{"q": "Water is", "choices": ["dry", "wet"], "label": 1}\n')
  (tmp_path / "tiny_mc.yaml").write_text(f"""task: jshear_tiny_mc
dataset_path: json
dataset_kwargs:
  cache_dir: {tmp_path / 'hf_datasets'}
  data_files:
    test: {tmp_path / 'data.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_target: label
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
  tok_dir = testing.train_tiny_tokenizer(str(tmp_path / "tok"))
  cfg = testing.tiny_cfg(vocab=320)
  path = model_io.save_model(str(tmp_path / "m"), cfg, testing.tiny_params(cfg), tokenizer_dir=tok_dir)
  res = lm_eval.simple_evaluate(model="jshear", model_args=f"path={path},max_length=64",
                                tasks=["jshear_tiny_mc"],
                                task_manager=TaskManager(include_path=str(tmp_path)))
  r = res["results"]["jshear_tiny_mc"]
  assert r["acc,none"] in (0.0, 0.5, 1.0)
