"""Tokenize per-domain text into packed, fixed-length shards plus a manifest.

  python -m jshear.data.prepare --tokenizer=HF_DIR --domain cc=/data/cc \
      --domain github='/data/code/**/*.jsonl.gz' --out=/data/shards --seq_len=4096

Two stages, both resumable (a killed run is simply started again):
1. tokenize: each input file -> `_work/<domain>/fNNNNNN.npz` (tokens + document
   lengths), written temp-then-rename by a pool of worker processes; files already
   done are not redone.
2. pack: per domain, hold out eval documents (by a seeded hash of file path and
   document index, so the split does not depend on workers or order of completion),
   pack each split into `<domain>/{train,valid,test}-NNNNN.npy` (see shards.py; the
   held-out documents divide into validation and test parts, `_split_eval`), count the
   training rows' token statistics (entropy.py: the entropies BiMix's training-free
   mixtures read), then publish `<domain>/DONE.json`. Shard names are deterministic, so a rerun
   overwrites rather than duplicates.
`manifest.json` is written last; `_work/` is removed once it exists.
"""

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import sys

import numpy as np
from tqdm import tqdm

from jshear.atomic import atomic_write, write_json
from jshear.data import entropy, shards, sources
from jshear.errors import JShearError
from jshear.model_io import load_tokenizer

log = logging.getLogger(__name__)

FORMAT = "jshear.shards.v2"  # v2: the held-out rows divide into valid and test parts
WORK = "_work"
TOKENIZE_KEYS = ("format", "tokenizer", "plan")  # what the tokenized files in _work depend on


# -- tokenizer identity -------------------------------------------------------

def tokenizer_id(tok) -> dict:
  """Name for humans; vocab size and vocab hash are what must match."""
  vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
  h = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
  name = os.path.basename(os.path.normpath(str(tok.name_or_path))) or type(tok).__name__
  pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
  return {"name": name, "vocab_size": len(tok), "vocab_hash": h,
          "bos_id": tok.bos_token_id, "eos_id": tok.eos_token_id,
          "pad_id": 0 if pad is None else int(pad)}


def check_tokenizer(want: dict, tokenizer, where: str) -> None:
  """Refuses shards made with another vocabulary. tokenizer: dir, tokenizer or id dict."""
  got = tokenizer
  if isinstance(tokenizer, (str, os.PathLike)):
    got = tokenizer_id(load_tokenizer(str(tokenizer)))
  elif not isinstance(tokenizer, dict):
    got = tokenizer_id(tokenizer)
  for key in ("vocab_size", "vocab_hash", "bos_id", "eos_id"):
    if want.get(key) != got.get(key):
      raise JShearError(
          f"{where}: shards were tokenized with '{want.get('name')}' ({key}={want.get(key)}), "
          f"but the given tokenizer '{got.get('name')}' has {key}={got.get(key)}; "
          "re-run jshear.data.prepare with this tokenizer")


def manifest_hash(out_dir: str) -> str:
  """The identity of a prepared dir's data: the hash of its manifest's bytes (16 hex digits;
  a re-prepared split or another tokenizer changes it)."""
  with open(os.path.join(out_dir, "manifest.json"), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def load_manifest(out_dir: str, tokenizer=None) -> dict:
  """Reads `manifest.json`; with `tokenizer`, refuses a vocabulary mismatch."""
  path = os.path.join(out_dir, "manifest.json")
  if not os.path.isfile(path):
    raise JShearError(f"{path}: expected a manifest from jshear.data.prepare, got no such file")
  with open(path) as f:
    m = json.load(f)
  if m.get("format") != FORMAT:
    raise JShearError(f"{path}: expected format '{FORMAT}', got '{m.get('format')}'")
  if tokenizer is not None:
    check_tokenizer(m["tokenizer"], tokenizer, path)
  return m


# -- stage 1: tokenize one file (runs in worker processes) --------------------

_TOK = None


def _init_worker(tokenizer_dir: str) -> None:
  global _TOK
  os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the pool is the parallelism
  _TOK = load_tokenizer(tokenizer_dir)


def _save_npz(path: str, **arrays) -> None:
  with atomic_write(path, "wb") as f:
    np.savez(f, **arrays)


def tokenize_file(task: tuple[str, str]) -> tuple[int, int]:
  """(path, cache) -> (docs, tokens); caches tokens, or a 'skipped' note for a bad file."""
  path, cache = task
  try:
    docs, raw = sources.read_documents(path)
  except UnicodeDecodeError as e:
    _save_npz(cache, skipped=np.array(f"not UTF-8: {e.reason} at byte {e.start}"))
    return 0, 0
  except (OSError, EOFError) as e:  # corrupt gzip and the like: skip and count too
    _save_npz(cache, skipped=np.array(f"unreadable: {e}"))
    return 0, 0
  bos, eos = _TOK.bos_token_id, _TOK.eos_token_id
  pieces, lengths = [], []
  docs = [d for d in docs if d.strip()]
  for i in range(0, len(docs), 64):
    ids = _TOK(docs[i:i + 64], add_special_tokens=False, return_attention_mask=False)["input_ids"]
    for x in ids:
      x = ([bos] if bos is not None else []) + list(x) + ([eos] if eos is not None else [])
      pieces.append(np.asarray(x, np.int32))
      lengths.append(len(x))
  tokens = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
  _save_npz(cache, tokens=tokens, lengths=np.asarray(lengths, np.int64),
            sha256=np.array(hashlib.sha256(raw).hexdigest()))
  return len(lengths), int(tokens.size)


# -- stage 2: split and pack one domain ---------------------------------------

def _doc_key(seed: int, rel: str, i: int) -> float:
  h = hashlib.blake2b(f"{seed}\0{rel}\0{i}".encode(), digest_size=8).digest()
  return int.from_bytes(h, "little") / 2.0**64


def _eval_mask(domain: str, keys: np.ndarray, fraction: float, n_eval: int | None) -> np.ndarray:
  if n_eval is None:
    return keys < fraction
  if n_eval >= len(keys):
    raise JShearError(f"domain '{domain}': --eval_docs={n_eval} needs more than {n_eval} documents, "
                      f"got {len(keys)}")
  mask = np.zeros(len(keys), bool)
  mask[np.argsort(keys, kind="stable")[:n_eval]] = True
  return mask


def _pack_domain(name: str, files: list[dict], caches: list[str], out: str, cfg: dict) -> dict:
  for n in os.listdir(os.path.join(out, name)):  # half-written leftovers of a killed run
    if n.endswith(".tmp"):
      os.remove(os.path.join(out, name, n))
  lengths, keys, owner = {}, [], []
  for fi, (f, c) in enumerate(zip(files, caches)):
    with np.load(c) as z:
      if "skipped" in z:
        f["skipped"] = str(z["skipped"])
        continue
      f["sha256"], lengths[fi] = str(z["sha256"]), z["lengths"]
    f["docs"] = int(len(lengths[fi]))
    keys += [_doc_key(cfg["seed"], f["path"], i) for i in range(f["docs"])]
    owner.append(fi)
  skipped = [f["path"] for f in files if "skipped" in f]
  if not keys:
    raise JShearError(f"domain '{name}': expected documents, got none "
                      f"({len(files)} files, {len(skipped)} skipped as unreadable)")
  n_eval = cfg["eval_docs"]
  if isinstance(n_eval, dict):  # per-domain counts
    n_eval = n_eval.get(name)
  is_eval = _eval_mask(name, np.asarray(keys), cfg["eval_fraction"], n_eval)
  if is_eval.all():
    raise JShearError(f"domain '{name}': every one of its {len(keys)} documents fell in the eval split; "
                      "lower --eval_fraction")
  if not is_eval.any():
    log.warning("domain '%s' has no eval documents: dynamic batch loading will hold its weight fixed", name)

  def docs(split_eval: bool):
    k = 0  # one file's tokens in memory at a time
    for fi in owner:
      with np.load(caches[fi]) as z:
        tokens = z["tokens"]
      start = 0
      for n in lengths[fi]:
        if is_eval[k] == split_eval:
          yield tokens[start:start + n]
        start += n
        k += 1

  entry = {"files": files, "skipped_files": skipped, "n_skipped": len(skipped)}
  all_lens = np.concatenate([lengths[fi] for fi in owner])
  lens = all_lens[~is_eval]
  entry["train"] = _write_split(name, "train", shards.pack(docs(False), cfg["seq_len"],
                                                           cfg["shard_sequences"],
                                                           cfg["tokenizer"]["pad_id"]), out)
  entry["train"].update(docs=int(len(lens)), tokens=int(lens.sum()))
  entry["stats"] = entropy.shard_stats([os.path.join(out, sh["file"]) for sh in entry["train"]["shards"]],
                                       cfg["tokenizer"]["vocab_size"])
  entry.update(_split_eval(name, np.asarray(keys)[is_eval], all_lens[is_eval],
                           list(docs(True)), cfg, out))
  entry["inputs_hash"] = _hash([(f["path"], f.get("sha256", f.get("skipped"))) for f in files])
  return entry


# Held-out documents are divided into a validation part (what dynamic batch loading, the
# in-loop evals and any tuning read) and a test part (what final figures and comparisons
# report). By whole documents when a domain holds out at least EVAL_SPLIT_MIN_DOCS of
# them, else by contiguous row blocks (a document may then straddle the boundary).
VALID_FRACTION = 0.25
EVAL_SPLIT_MIN_DOCS = 4


def _write_split(name: str, split: str, shard_rows, out: str) -> dict:
  shard_list = []
  for i, rows in enumerate(shard_rows):
    rel = f"{name}/{shards.shard_name(split, i)}"
    shards.write_shard(os.path.join(out, rel), rows)
    shard_list.append({"file": rel, "sequences": int(len(rows))})
  return {"sequences": sum(s["sequences"] for s in shard_list), "shards": shard_list}


def _split_eval(name: str, keys: np.ndarray, lens: np.ndarray, docs: list, cfg: dict,
                out: str) -> dict:
  """{"valid", "test", "eval" (both, valid rows first), "eval_split"} of one domain."""
  pack = lambda ds: list(shards.pack(iter(ds), cfg["seq_len"], cfg["shard_sequences"],
                                     cfg["tokenizer"]["pad_id"]))
  n = len(docs)
  if n >= EVAL_SPLIT_MIN_DOCS:
    order = np.argsort(keys, kind="stable")        # the seeded document hash decides
    valid = np.zeros(n, bool)
    valid[order[:max(1, int(round(n * VALID_FRACTION)))]] = True
    parts = {"valid": pack([d for d, v in zip(docs, valid) if v]),
             "test": pack([d for d, v in zip(docs, valid) if not v])}
    how = {"by": "documents", "valid_docs": int(valid.sum()), "test_docs": int(n - valid.sum())}
    doc_stats = {"valid": lens[valid], "test": lens[~valid]}
  else:
    rows = np.concatenate(pack(docs)) if n else np.zeros((0, 2, cfg["seq_len"]), np.int32)
    cut = max(1, int(round(len(rows) * VALID_FRACTION))) if len(rows) > 1 else len(rows)
    parts = {"valid": [rows[:cut]] if cut else [], "test": [rows[cut:]] if len(rows) > cut else []}
    how = {"by": "rows", "docs": n}
    doc_stats = {}
  entry = {}
  for split, shard_rows in parts.items():
    entry[split] = _write_split(name, split, shard_rows, out)
    if split in doc_stats:
      entry[split].update(docs=int(len(doc_stats[split])), tokens=int(doc_stats[split].sum()))
  how.update(valid_rows=entry["valid"]["sequences"], test_rows=entry["test"]["sequences"])
  entry["eval_split"] = how
  entry["eval"] = {"docs": n, "tokens": int(lens.sum()),
                   "sequences": entry["valid"]["sequences"] + entry["test"]["sequences"],
                   "shards": entry["valid"]["shards"] + entry["test"]["shards"]}
  return entry


# -- driver -------------------------------------------------------------------

def _hash(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _write_json(path: str, obj) -> None:
  write_json(path, obj, indent=1)


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _plan(domains: dict[str, str]) -> dict:
  plan = {}
  for name, spec in domains.items():
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name == WORK:
      raise JShearError(f"--domain {name}=...: expected a name of letters, digits, '_', '.', '-', got '{name}'")
    root, files = sources.list_files(spec)
    if not files:
      raise JShearError(f"domain '{name}': expected {', '.join(sources.SUFFIXES)} files in '{spec}', got none")
    plan[name] = {"spec": spec, "files": [
        {"path": os.path.relpath(p, root), "abs": os.path.abspath(p), "bytes": os.path.getsize(p),
         "mtime_ns": os.stat(p).st_mtime_ns} for p in files]}
  return plan


def _check_same(path: str, want: dict, got: dict) -> None:
  """A resumed or repeated run must have the same settings and the same input files."""
  for key in sorted(set(want) | set(got)):
    if want.get(key) == got.get(key):
      continue
    what = f"'{key}'"
    if key == "plan":
      a, b = want.get(key) or {}, got.get(key) or {}
      d = next((d for d in sorted(set(a) | set(b)) if a.get(d) != b.get(d)), None)
      old = {f["path"]: f for f in (a.get(d) or {}).get("files", [])}
      new = {f["path"]: f for f in (b.get(d) or {}).get("files", [])}
      f = next((f for f in sorted(set(old) | set(new)) if old.get(f) != new.get(f)), None)
      what = f"inputs of domain '{d}'" + (f" (file '{f}' added, removed or modified)" if f else "")
    raise JShearError(f"{path}: this output dir was started with different {what}; "
                      "use a fresh --out or delete it")


def prepare(tokenizer: str, domains: dict[str, str], out: str, seq_len: int = 4096,
            eval_fraction: float = 0.01, eval_docs: int | dict | None = None, workers: int = 1,
            seed: int = 0, shard_sequences: int = 2048, progress: bool = True) -> dict:
  """Builds (or finishes) the prepared dataset in `out` and returns its manifest."""
  if seq_len < 2:
    raise JShearError(f"--seq_len: expected >= 2, got {seq_len}")
  if not 0.0 <= eval_fraction < 1.0:
    raise JShearError(f"--eval_fraction: expected in [0, 1), got {eval_fraction}")
  counts = eval_docs.values() if isinstance(eval_docs, dict) else [eval_docs]
  if any(n is not None and n < 0 for n in counts):
    raise JShearError(f"--eval_docs: expected >= 0, got {eval_docs}")
  if not domains:
    raise JShearError("expected at least one --domain NAME=GLOB_OR_DIR, got none")
  tok = load_tokenizer(tokenizer, label=f"--tokenizer={tokenizer}")
  cfg = {"format": FORMAT, "tokenizer": tokenizer_id(tok), "seq_len": seq_len, "seed": seed,
         "eval_fraction": eval_fraction, "eval_docs": eval_docs,
         "shard_sequences": shard_sequences, "plan": _plan(domains)}

  os.makedirs(os.path.join(out, WORK), exist_ok=True)
  mpath = os.path.join(out, "manifest.json")
  cpath = os.path.join(out, WORK, "config.json")
  if os.path.exists(mpath):
    m = _read_json(mpath)
    _check_same(mpath, m["config"], cfg)
    shutil.rmtree(os.path.join(out, WORK), ignore_errors=True)
    return load_manifest(out)
  if os.path.exists(cpath):
    old = _read_json(cpath)
    _check_same(cpath, {k: old.get(k) for k in TOKENIZE_KEYS}, {k: cfg[k] for k in TOKENIZE_KEYS})
    if old != cfg:  # only packing settings changed: keep the tokenized files, re-pack all
      log.info("packing settings changed since the interrupted run: re-packing every domain")
      for name in cfg["plan"]:
        d = os.path.join(out, name)
        for n in os.listdir(d) if os.path.isdir(d) else ():
          if n == "DONE.json" or n.endswith((".npy", ".tmp")):
            os.remove(os.path.join(d, n))
  _write_json(cpath, cfg)

  todo = {}
  for name, p in cfg["plan"].items():
    os.makedirs(os.path.join(out, WORK, name), exist_ok=True)
    os.makedirs(os.path.join(out, name), exist_ok=True)
    if os.path.exists(os.path.join(out, name, "DONE.json")):
      continue
    caches = [os.path.join(out, WORK, name, f"f{i:06d}.npz") for i in range(len(p["files"]))]
    todo[name] = caches
  tasks = [(f["abs"], c) for name, caches in todo.items()
           for f, c in zip(cfg["plan"][name]["files"], caches) if not os.path.exists(c)]
  _tokenize_all(tasks, tok, tokenizer, workers, progress)

  entries = {}
  for name, p in cfg["plan"].items():
    done = os.path.join(out, name, "DONE.json")
    if name in todo:
      files = [{k: f[k] for k in ("path", "bytes")} for f in p["files"]]
      entry = _pack_domain(name, files, todo[name], out, cfg)
      entry["spec"] = p["spec"]
      _write_json(done, entry)
    entries[name] = _read_json(done)
  manifest = {"format": FORMAT, "seq_len": seq_len, "tokenizer": cfg["tokenizer"],
              "inputs_hash": _hash({n: e["inputs_hash"] for n, e in entries.items()}),
              "domains": entries, "config": cfg}
  _write_json(mpath, manifest)
  shutil.rmtree(os.path.join(out, WORK), ignore_errors=True)
  return load_manifest(out)


def _tokenize_all(tasks, tok, tokenizer_dir: str, workers: int, progress: bool) -> None:
  bar = tqdm(total=len(tasks), unit="file", desc="tokenize", disable=not progress or not tasks)
  tokens = 0
  pooled = workers > 1 and len(tasks) > 1  # else in-process: no spawn cost, Rust threads still help
  if not pooled:
    global _TOK
    _TOK = tok
    results = map(tokenize_file, tasks)
  else:
    pool = mp.get_context("spawn").Pool(workers, _init_worker, (tokenizer_dir,))
    results = pool.imap_unordered(tokenize_file, tasks)
  try:
    for _, n in results:
      tokens += n
      bar.update(1)
      bar.set_postfix(tokens=f"{tokens:,}")
  finally:
    bar.close()
    if pooled:
      pool.terminate()


def _parse_domains(items: list[str]) -> dict[str, str]:
  out = {}
  for item in items:
    name, sep, spec = item.partition("=")
    if not sep or not name or not spec:
      raise JShearError(f"--domain: expected NAME=GLOB_OR_DIR, got '{item}'")
    if name in out:
      raise JShearError(f"--domain: expected each name once, got '{name}' twice")
    out[name] = spec
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m jshear.data.prepare", description=__doc__.split("\n")[0])
  ap.add_argument("--tokenizer", required=True, help="Hugging Face tokenizer directory (read offline)")
  ap.add_argument("--domain", action="append", default=[], metavar="NAME=GLOB_OR_DIR",
                  help="a domain and its files (.txt, .jsonl[.gz] with a 'text' field, .parquet); repeat")
  ap.add_argument("--out", required=True, help="output directory (rerun the same command to resume)")
  ap.add_argument("--seq_len", type=int, default=4096)
  split = ap.add_mutually_exclusive_group()
  split.add_argument("--eval_fraction", type=float, default=0.01, help="share of documents held out per domain")
  split.add_argument("--eval_docs", type=int, default=None, help="exact number of documents held out per domain")
  ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                  help="tokenizer processes (0 or 1 = in this process)")
  ap.add_argument("--seed", type=int, default=0, help="seed of the eval split")
  ap.add_argument("--shard_sequences", type=int, default=2048, help="sequences per shard file")
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  try:
    m = prepare(args.tokenizer, _parse_domains(args.domain), args.out, args.seq_len, args.eval_fraction,
                args.eval_docs, args.workers, args.seed, args.shard_sequences)
  except JShearError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2  # bad input (as every jshear CLI)
  for name, d in m["domains"].items():
    print(f"{name}: train {d['train']['tokens']:,} tokens / {d['train']['sequences']:,} seqs, "
          f"eval {d['eval']['tokens']:,} tokens / {d['eval']['sequences']:,} seqs, "
          f"{d['n_skipped']} files skipped")
  return 0


if __name__ == "__main__":
  sys.exit(main())
