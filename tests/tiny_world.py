"""A tiny but real world for end-to-end runs: a word-level tokenizer trained on real text
already on every Debian machine, a 3-domain prepared dataset, and a tiny random LLaMA."""

from __future__ import annotations

import glob
import os
import sysconfig

import hf_tiny

SEQ = 32


def _texts():
  """Three real domains from files every machine has: license prose, Python code, and
  Python's own documentation strings (the stdlib's longest modules)."""
  lic = sorted(glob.glob("/usr/share/common-licenses/*"))
  lic = [p for p in lic if os.path.isfile(p)][:6]
  stdlib = sysconfig.get_paths()["stdlib"]
  code = [os.path.join(stdlib, n) for n in ("json/decoder.py", "json/encoder.py", "heapq.py",
                                            "bisect.py", "colorsys.py", "textwrap.py")]
  docs = [os.path.join(stdlib, n) for n in ("this.py", "keyword.py", "token.py", "fnmatch.py",
                                            "glob.py", "shlex.py")]
  return {"legal": lic, "code": code, "misc": docs}


def build(root, *, family="llama", kv=2, tied=False):
  """Returns dict(hf=HF model dir with tokenizer, data=prepared dir, corpus=dir)."""
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast

  from jshear.data.prepare import prepare

  root = str(root)
  corpus = os.path.join(root, "corpus")
  all_text = []
  for dom, paths in _texts().items():
    os.makedirs(os.path.join(corpus, dom), exist_ok=True)
    for i, p in enumerate(paths):
      with open(p, encoding="utf-8", errors="replace") as f:
        text = f.read()[:6000]
      all_text.append(text)
      with open(os.path.join(corpus, dom, f"{i}.txt"), "w") as f:
        f.write(text)
  tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.train_from_iterator(all_text, trainers.WordLevelTrainer(
      vocab_size=250, special_tokens=["<pad>", "<unk>", "<s>", "</s>"]))
  hf = os.path.join(root, "hf")
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 pad_token="<pad>", unk_token="<unk>")
  if family == "llama":
    config = hf_tiny.llama_config(kv=kv, tied=tied, vocab=256, hidden=64, heads=4, layers=4,
                                  inter=96, head_dim=16)
  else:
    config = hf_tiny.cohere_config(kv=kv, vocab=256, hidden=64, heads=4, layers=4, inter=96)
  config.bos_token_id, config.eos_token_id = 2, 3
  hf_tiny.build(config).save_pretrained(hf)
  fast.save_pretrained(hf)
  data = os.path.join(root, "data")
  prepare(hf, {d: os.path.join(corpus, d) for d in _texts()}, data, seq_len=SEQ, eval_docs=1,
          workers=0, progress=False)
  return {"hf": hf, "data": data, "corpus": corpus}


def config(world, **prune_target):
  from jshear.config_base import base_config
  c = base_config()
  c.model.source = world["hf"]
  c.data.path = world["data"]
  c.data.seq_len = SEQ
  c.mesh.ici.update(data=2, fsdp=4, tensor=1)
  p = c.prune
  p.steps, p.batch_size, p.warmup_steps, p.lr = 6, 8, 1, 1e-3
  p.learned.target_warmup_steps = 3
  p.groups = "layer,kv,intermediate,hidden"
  p.target.update(num_layers=3, num_heads=2, num_kv_heads=1, hidden_size=32,
                  intermediate_size=48)
  p.target.update(**prune_target)
  p.log_every, p.eval_every, p.eval_batches, p.ckpt_every = 1, 3, 1, 3
  p.reweight_rule, p.reweight_every = "sheared", 3
  k = c.continued
  k.steps, k.batch_size, k.warmup_steps, k.lr = 6, 8, 1, 1e-3
  k.log_every, k.eval_every, k.eval_batches, k.ckpt_every = 1, 3, 1, 3
  k.reweight_rule, k.reweight_every = "sheared_code", 3
  return c


_PRUNE_CONFIG_FILE = """
import sys
sys.path.insert(0, {tests!r})
import tiny_world
def get_config():
  c = tiny_world.config({{"hf": {hf!r}, "data": {data!r}}})
  c.stages = "prune"
  c.prune.steps, c.prune.ckpt_every, c.prune.eval_every = 2, 2, 2
  return c
"""


def write_prune_config(world, path, hf=None) -> str:
  """A config file for `python -m jshear.train --config=PATH`: the tiny world's two-step
  prune stage (CLI tests of bad input and refusals). Returns the path."""
  path = str(path)
  with open(path, "w") as f:
    f.write(_PRUNE_CONFIG_FILE.format(tests=os.path.dirname(os.path.abspath(__file__)),
                                      hf=hf or world["hf"], data=world["data"]))
  return path


def grow_config(world, factor=2):
  """pretrain (2 layers, 4 steps) -> grow (stack x `factor`) -> pretrain again (block
  `pretrain_2`: 12 steps at a lower lr) -> export, on the tiny world's tokenizer and data."""
  import ml_collections as mlc
  c = config(world)
  c.stages = "pretrain,grow,pretrain,export"
  c.model.source, c.final_eval, c.model.remat = "", False, "none"
  c.model.update(vocab_size=256, hidden_size=32, intermediate_size=48, num_layers=2,
                 num_heads=4, num_kv_heads=2, head_dim=8, tokenizer=world["hf"])
  t = c.pretrain
  t.steps, t.batch_size, t.warmup_steps, t.lr = 4, 8, 1, 3e-3
  t.log_every, t.eval_every, t.ckpt_every = 1, 0, 4
  c.grow.factor = factor
  c.pretrain_2 = mlc.ConfigDict({"steps": 12, "lr": 1e-3, "warmup_steps": 2, "ckpt_every": 3})
  return c


_GROW_CONFIG_FILE = """
import sys
sys.path.insert(0, {tests!r})
import tiny_world
def get_config():
  return tiny_world.grow_config({{"hf": {hf!r}, "data": {data!r}}})
"""


def write_grow_config(world, path) -> str:
  """grow_config as a config file for `python -m jshear.train --config=PATH`."""
  path = str(path)
  with open(path, "w") as f:
    f.write(_GROW_CONFIG_FILE.format(tests=os.path.dirname(os.path.abspath(__file__)),
                                     hf=world["hf"], data=world["data"]))
  return path
def refused(world, tmp_path, *flags) -> str:
  """`python -m jshear.train` on the tiny world's prune config plus `flags`: asserts exit 2,
  no traceback, exactly one `error:` line (the last) and an empty workdir; returns it."""
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = write_prune_config(world, os.path.join(str(tmp_path), "cfg.py"))
  w = os.path.join(str(tmp_path), "w")
  env = dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "jshear.train", f"--config={path}",
                      f"--workdir={w}", *flags], cwd=repo, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
  assert "Traceback" not in r.stderr, r.stderr
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and r.stderr.strip().splitlines()[-1] == errors[0], r.stderr
  assert not os.path.exists(w) or os.listdir(w) == []
  return errors[0]
