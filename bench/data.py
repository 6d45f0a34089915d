"""Data-side throughput: mixture loader tokens/s, prepare's tokenization tokens/s, and what
counting the token statistics (entropies) adds to prepare.

  python bench/data.py [--small] [--tokenizer=HF_DIR] [--corpus=DIR_OF_DOMAIN_DIRS]

Prints one JSON line per figure. The loader reads synthetic shards of the paper's
7 domains at seq 4096 (what it reads does not change its speed); prepare tokenizes
real text: the given corpus, else Python's standard library source as jsonl, with
the given tokenizer, else a byte-level BPE (8k vocab) trained here in memory.
"""

import argparse
import json
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from jshear.data import entropy, prepare, shards  # noqa: E402
from jshear.data.mixture import MixtureLoader  # noqa: E402
from jshear.data.reweight import INITIAL_WEIGHTS  # noqa: E402


def _emit(**kw):
  print(json.dumps(kw), flush=True)


def bench_loader(tmp: str, seqs: int, batch: int, steps: int, seq_len: int = 4096) -> None:
  """Sparse shards: rows past the first 64 read as zeros without touching disk, so this
  times the loader's own work (composition, shuffle, gather, positions) from the page
  cache, not the disk."""
  rng = np.random.default_rng(0)
  src = {}
  for d in INITIAL_WEIGHTS["continued"]:
    path = os.path.join(tmp, f"{d}.npy")
    rows = np.lib.format.open_memmap(path, "w+", np.int32, (seqs, 2, seq_len))
    rows[:64, 0] = rng.integers(0, 32000, (64, seq_len))
    rows[:64, 1] = 1 + np.arange(seq_len) // 1000  # ~4 documents per row
    rows.flush()
    del rows
    src[d] = shards.ShardedSequences([path])
  logging.getLogger("jshear.data.mixture").setLevel(logging.ERROR)  # epoch wrap warnings
  for procs in (1, 8):
    make = lambda: MixtureLoader(src, INITIAL_WEIGHTS["continued"], batch_size=batch, process_count=procs)
    warm = make()
    for _ in range(steps):  # the same rows once first: page cache warm, as in a long run
      warm.next_batch()
    mix = make()
    t = time.perf_counter()
    for _ in range(steps):
      b = mix.next_batch()
    dt = time.perf_counter() - t
    _emit(bench="data.mixture_loader", tokens_per_s=round(b["tokens"].size * steps / dt),
          batches_per_s=round(steps / dt, 1), global_batch=batch, host_rows=batch // procs,
          process_count=procs, seq_len=seq_len, domains=len(src), rows_per_domain=seqs)


def _stdlib_corpus(root: str, mb: float) -> dict[str, str]:
  """Python's own source as jsonl, one document per module, split into 2 domains."""
  lib = os.path.dirname(os.__file__)
  files = sorted(os.path.join(d, n) for d, _, ns in os.walk(lib) if "site-packages" not in d
                 for n in ns if n.endswith(".py"))
  budget, docs = mb * 2**20, []
  for f in files:
    try:
      docs.append(open(f, encoding="utf-8").read())
    except (UnicodeDecodeError, OSError):
      continue
    budget -= len(docs[-1])
    if budget <= 0:
      break
  out = {}
  for k, name in enumerate(("code_a", "code_b")):
    os.makedirs(os.path.join(root, name))
    part = docs[k::2]
    for j in range(0, len(part), 50):
      with open(os.path.join(root, name, f"{j:05d}.jsonl"), "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in part[j:j + 50])
    out[name] = os.path.join(root, name)
  return out


def _bpe(path: str, domains: dict[str, str]) -> str:
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  from jshear.data import sources
  texts = [t for spec in domains.values() for f in sources.list_files(spec)[1][:20]
           for t in sources.read_documents(f)[0]]
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=8192, special_tokens=["<s>", "</s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(path)
  return path


def bench_prepare(tmp: str, tokenizer: str | None, corpus: str | None, mb: float, workers: list[int]) -> None:
  if corpus:
    domains = {d: os.path.join(corpus, d) for d in sorted(os.listdir(corpus))
               if os.path.isdir(os.path.join(corpus, d))}
  else:
    domains = _stdlib_corpus(os.path.join(tmp, "corpus"), mb)
  tokenizer = tokenizer or _bpe(os.path.join(tmp, "tok"), domains)
  for w in workers:
    out = os.path.join(tmp, f"prep{w}")
    t = time.perf_counter()
    m = prepare.prepare(tokenizer, domains, out, seq_len=4096, workers=w, progress=False)
    dt = time.perf_counter() - t
    tokens = sum(d["train"]["tokens"] + d["eval"]["tokens"] for d in m["domains"].values())
    mb_in = sum(f["bytes"] for d in m["domains"].values() for f in d["files"]) / 2**20
    _emit(bench="data.prepare", tokens_per_s=round(tokens / dt), tokens=tokens, input_mb=round(mb_in, 1),
          seconds=round(dt, 2), workers=w, tokenizer=m["tokenizer"]["name"],
          vocab_size=m["tokenizer"]["vocab_size"], note="wall time incl. tokenizer load, packing, writes")
    # the statistics prepare just counted, counted again alone: their share of its time
    t = time.perf_counter()
    for d in m["domains"].values():
      entropy.shard_stats([os.path.join(out, sh["file"]) for sh in d["train"]["shards"]],
                          m["tokenizer"]["vocab_size"])
    ds = time.perf_counter() - t
    _emit(bench="data.entropy_stats", seconds=round(ds, 2), prepare_seconds=round(dt, 2),
          added_to_prepare=round(ds / max(dt - ds, 1e-9), 3), target_at_most=0.2, workers=w,
          train_tokens=sum(d["train"]["tokens"] for d in m["domains"].values()),
          vocab_size=m["tokenizer"]["vocab_size"], hashed=m["domains"][next(iter(m["domains"]))]["stats"]["hashed"])


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--small", action="store_true", help="seconds-long run (CI)")
  ap.add_argument("--tokenizer", help="HF tokenizer dir for the prepare figure")
  ap.add_argument("--corpus", help="dir of <domain>/ text dirs for the prepare figure")
  ap.add_argument("--workers", default="1,2", help="prepare worker counts to time, comma-separated")
  args = ap.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    if args.small:
      bench_loader(tmp, seqs=20000, batch=32, steps=10)
      bench_prepare(tmp, args.tokenizer, args.corpus, mb=0.5, workers=[0])
    else:
      bench_loader(tmp, seqs=200000, batch=256, steps=20)
      bench_prepare(tmp, args.tokenizer, args.corpus, mb=8, workers=[int(w) for w in args.workers.split(",")])


if __name__ == "__main__":
  main()
