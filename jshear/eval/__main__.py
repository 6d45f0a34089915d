"""Evaluation CLI.

  python -m jshear.eval ppl   --model=DIR --text=FILE [FILE ...] [--max-len 2048] [--stride N]
  python -m jshear.eval tasks --model=DIR [--tasks=piqa,hellaswag,...|all] [--limit N] [--out F]
  python -m jshear.eval tasks --model hf --model_args pretrained=DIR,dtype=float32 \
      --tasks piqa --output_path OUT            # lm-eval's spelling, for copied commands
  python -m jshear.eval bias  --source=DIR --pruned=DIR[,DIR...] --tasks=piqa,arc_easy \
      [--limit N] [--out DIR] [--each] [--bootstrap B]   # per-class bias of pruning
  python -m jshear.eval fetch                 # download + cache the zero-shot eval sets
  python -m jshear.eval lm-eval --model jshear --model_args path=DIR --tasks ...   (lm_eval CLI
                                              with the `jshear` model registered)

--model is a jshear model dir (model_config.json, params/, tokenizer/) or a Hugging Face
safetensors dir. `--backend torch` scores with transformers instead (HF dirs only; parity).
`tasks` prints the results table alone on stdout (progress goes to stderr), so it pipes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

from jshear.atomic import write_json
from jshear.errors import JShearError


def _text_domains(specs):
  """FILE -> domain FILE's stem; NAME=PATH -> domain NAME; a directory -> its files as docs."""
  domains: dict[str, list[str]] = {}
  for spec in specs:
    name, path = spec.split("=", 1) if "=" in spec and not os.path.exists(spec) else (None, spec)
    if not os.path.exists(path):
      raise JShearError(f"--text {path}: no such file or directory")
    if os.path.isdir(path):
      files = sorted(os.path.join(path, f) for f in os.listdir(path)
                     if os.path.isfile(os.path.join(path, f)) and not f.startswith("."))
      if not files:
        raise JShearError(f"--text {path}: directory has no files")
      name = name or os.path.basename(os.path.normpath(path))
    else:
      files = [path]
      base, ext = os.path.splitext(os.path.basename(path))
      name = name or (base if ext[1:].isalpha() else base + ext)   # "Apache-2.0" stays whole
    for f in files:
      with open(f, encoding="utf-8", errors="replace") as fh:
        domains.setdefault(name, []).append(fh.read())
  return domains


def _dtype(name):
  from jshear.model.config import compute_dtype
  return compute_dtype(name)


def cmd_ppl(args) -> int:
  from jshear.eval import loader, ppl, scoring
  domains = _text_domains(args.text)
  m = loader.load(args.model, tokenizer=args.tokenizer)
  prefix = None if args.no_prefix else scoring.prefix_token_id(m.tokenizer)
  docs = {d: ppl.tokenize_documents(m.tokenizer, texts) for d, texts in domains.items()}
  nbytes = {d: sum(len(t.encode("utf-8")) for t in texts) for d, texts in domains.items()}
  t0 = time.time()
  res = ppl.evaluate_domains(m.params, m.cfg, docs, compute_dtype=_dtype(args.dtype),
                             num_bytes=nbytes, max_len=args.max_len, stride=args.stride,
                             batch_size=args.batch_size, prefix_token=prefix, progress=True)
  print(f"{'domain':<24}{'tokens':>10}{'loss':>10}{'ppl':>12}{'bpb':>8}")
  for d, r in res.items():
    print(f"{d:<24}{r['tokens']:>10}{r['loss']:>10.4f}{r['ppl']:>12.3f}{r.get('bpb', float('nan')):>8.4f}")
  out = {"model": m.path, "max_len": args.max_len, "stride": args.stride,
         "prefix_token": prefix, "seconds": time.time() - t0, "domains": res}
  if args.out:
    _write_json(args.out, out)
  return 0


def _write_json(path, obj):
  write_json(path, obj)
  print(f"wrote {path}", file=sys.stderr)


# `--model_args` keys (lm-eval's hf model) -> `tasks` options; others are refused.
_MODEL_ARGS = {"pretrained": "model", "path": "model", "tokenizer": "tokenizer",
               "dtype": "dtype", "max_length": "max_length"}
# lm-eval `--model` types that mean "the dir is in --model_args".
_LM_EVAL_MODEL_TYPES = ("hf", "hf-auto", "huggingface", "jshear")
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "auto": None}     # auto: keep --dtype (default float32)


def apply_model_args(args) -> None:
  """Fold lm-eval's `--model_args k=v,...` into `args`; a key set twice must agree."""
  if args.model in _LM_EVAL_MODEL_TYPES and not os.path.isdir(args.model):
    if not args.model_args:
      raise JShearError(f"--model={args.model} is an lm-eval model type: name the model dir "
                        f"with --model_args pretrained=DIR (or pass --model=DIR)")
    args.model = None
  for item in filter(None, (args.model_args or "").split(",")):
    key, eq, value = item.partition("=")
    if not eq or key not in _MODEL_ARGS:
      raise JShearError(f"--model_args: unknown or malformed entry {item!r}; expected KEY=VALUE "
                        f"with KEY in {', '.join(_MODEL_ARGS)}")
    if key == "dtype":
      if value not in _DTYPES:
        raise JShearError(f"--model_args dtype={value}: expected one of {', '.join(_DTYPES)}")
      value = _DTYPES[value]
      if value is None:
        continue
    elif key == "max_length":
      if not value.isdigit():
        raise JShearError(f"--model_args max_length={value}: expected a positive integer")
      value = int(value)
    dest, old = _MODEL_ARGS[key], getattr(args, _MODEL_ARGS[key])
    if old is not None and old != value:
      raise JShearError(f"--model_args {key}={value} conflicts with --{dest}={old}")
    setattr(args, dest, value)
  if args.model is None:
    raise JShearError("tasks: no model; pass --model=DIR or --model_args pretrained=DIR")


def results_path(path: str) -> str:
  """A file path ending in .json, else a directory (lm-eval's --output_path) with
  results.json in it."""
  if path.endswith(".json") and not os.path.isdir(path):
    return path
  return os.path.join(path, "results.json")


def cmd_tasks(args) -> int:
  apply_model_args(args)
  # Everything but the results table goes to stderr, so `... | tee table.md` gets the table.
  with contextlib.redirect_stdout(sys.stderr):
    out = _run_tasks(args)
  print(format_table(out))
  return 0


def _run_tasks(args) -> dict:
  from jshear.assets import eval_sets as datasets
  from jshear.eval import loader, scoring, tasks
  names = tasks.parse_task_names(args.tasks)         # bad names fail before any loading
  root = datasets.eval_sets_dir(fetch=args.fetch)
  t0 = time.time()
  m = loader.load(args.model, tokenizer=args.tokenizer,
                  with_params=args.backend == "jax")
  prep = tasks.prepare(m.tokenizer, names, args.limit, root)
  max_len = args.max_length or min(m.cfg.max_position_embeddings, 4096)
  if args.backend == "jax":
    backend = scoring.JaxBackend(m.cfg, m.params, compute_dtype=_dtype(args.dtype), max_length=max_len)
  else:
    if m.kind != "hf":
      raise JShearError("--backend torch needs a Hugging Face model dir")
    import torch
    import transformers
    torch.set_num_threads(os.cpu_count() or 1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(m.path, dtype=torch.float32)
    backend = scoring.TorchBackend(hf, max_length=max_len)
  t1 = time.time()
  metrics = tasks.score_prepared(backend, prep, tokens_per_batch=args.tokens_per_batch)
  t2 = time.time()
  config = {"model": "jshear", "model_args": f"path={m.path}", "backend": args.backend,
            "limit": args.limit, "batch_size": f"auto({args.tokens_per_batch} tokens)",
            "max_length": max_len, "dtype": args.dtype or "float32", "num_fewshot": 0,
            "requests": len(prep.encoded), "load_seconds": t1 - t0, "score_seconds": t2 - t1}
  out = tasks.to_lm_eval_json(metrics, prep, config)
  out["date"] = time.time()
  out["total_evaluation_time_seconds"] = str(t2 - t0)
  if args.out:
    _write_json(results_path(args.out), out)
  return out


def format_table(out: dict) -> str:
  lines = ["|task|metric|value|stderr|n|", "|---|---|---:|---:|---:|"]
  for task, r in out["results"].items():
    n = out["n-samples"][task]["effective"]
    for k, v in r.items():
      if k == "alias" or "_stderr" in k:
        continue
      metric = k.split(",")[0]
      se = r.get(f"{metric}_stderr,none")
      lines.append(f"|{task}|{metric}|{v:.4f}|{'' if se is None else f'{se:.4f}'}|{n}|")
  return "\n".join(lines)


def cmd_bias(args) -> int:
  from jshear.assets import eval_sets as datasets
  from jshear.eval import bias
  return bias.run(args, lambda: datasets.eval_sets_dir(fetch=args.fetch))


def cmd_fetch(args) -> int:
  from jshear.assets import eval_sets as datasets
  print(datasets.eval_sets_dir(fetch=True))
  return 0


def cmd_lm_eval(argv) -> int:
  from jshear.eval import lm_eval_adapter
  lm_eval_adapter.register()
  from lm_eval.__main__ import cli_evaluate
  sys.argv = ["lm_eval"] + list(argv)
  cli_evaluate()
  return 0


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv and argv[0] == "lm-eval":
    try:
      return cmd_lm_eval(argv[1:])
    except JShearError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2  # bad input (as every jshear CLI)
  ap = argparse.ArgumentParser(prog="python -m jshear.eval", description=__doc__.split("\n")[0])
  sub = ap.add_subparsers(dest="cmd", required=True)
  p = sub.add_parser("ppl", help="per-domain loss / perplexity / bits-per-byte of text files")
  p.add_argument("--model", required=True)
  p.add_argument("--text", required=True, nargs="+", action="extend",
                 help="FILE, NAME=FILE or DIR (one domain each; comma-free)")
  p.add_argument("--tokenizer", default=None)
  p.add_argument("--max-len", "--max_len", dest="max_len", type=int, default=2048)
  p.add_argument("--stride", type=int, default=None, help="window step (default max_len/2)")
  p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=2)
  p.add_argument("--no-prefix", action="store_true", help="do not prepend BOS to documents")
  p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
  p.add_argument("--out", default=None)
  t = sub.add_parser("tasks", help="zero-shot multiple-choice tasks (lm-eval conventions)")
  t.add_argument("--model", default=None,
                 help="model dir (or an lm-eval model type such as hf, with --model_args)")
  t.add_argument("--model_args", "--model-args", dest="model_args", default=None,
                 help="lm-eval style: pretrained=DIR[,dtype=float32|bfloat16][,tokenizer=DIR]"
                      "[,max_length=N]")
  t.add_argument("--tasks", default="all")
  t.add_argument("--limit", type=int, default=None, help="first N documents per task")
  t.add_argument("--out", "--output_path", "--output-path", dest="out", default=None,
                 help="results JSON (lm-eval layout): FILE.json, or a directory for results.json")
  t.add_argument("--tokenizer", default=None)
  t.add_argument("--backend", default="jax", choices=["jax", "torch"])
  t.add_argument("--max-length", "--max_length", dest="max_length", type=int, default=None)
  t.add_argument("--tokens-per-batch", dest="tokens_per_batch", type=int, default=2048)
  t.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
  t.add_argument("--fetch", action="store_true", help="download the eval sets if missing")
  b = sub.add_parser("bias", help="per-class bias of pruned models vs the source (CEV, SDE, "
                                  "PIEs; docs/bias_metrics.md)")
  b.add_argument("--source", required=True, help="the unpruned model dir")
  b.add_argument("--pruned", required=True, help="pruned model dir(s), comma-separated (trials)")
  b.add_argument("--tasks", required=True, help="multiple-choice tasks, comma-separated")
  b.add_argument("--limit", type=int, default=None, help="first N documents per task")
  b.add_argument("--out", default=None, help="output dir for bias.md, bias.json, bias.png")
  b.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  b.add_argument("--zero_rates", "--zero-rates", dest="zero_rates", default="exclude",
                 choices=["exclude", "smooth"], help="a class whose source FPR or FNR is 0")
  b.add_argument("--alpha", type=float, default=0.5, help="add-alpha counts for --zero_rates=smooth")
  b.add_argument("--rule", default="acc", choices=["acc", "acc_norm"],
                 help="prediction: argmax log-likelihood (acc) or per character (acc_norm)")
  b.add_argument("--by_category", "--by-category", dest="by_category", default="",
                 help="tasks whose class is the document's category (hellaswag, copa)")
  b.add_argument("--each", action="store_true",
                 help="each pruned model against the source alone (not trials of one pruning)")
  b.add_argument("--bootstrap", type=int, default=0,
                 help="resamples of the documents for standard errors of CEV and SDE (0: none)")
  b.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
  b.add_argument("--tokens-per-batch", "--tokens_per_batch", dest="tokens_per_batch", type=int,
                 default=2048)
  b.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
  b.add_argument("--fetch", action="store_true", help="download the eval sets if missing")
  sub.add_parser("fetch", help="download and cache the zero-shot eval sets")
  args = ap.parse_args(argv)
  try:
    return {"ppl": cmd_ppl, "tasks": cmd_tasks, "bias": cmd_bias,
            "fetch": cmd_fetch}[args.cmd](args)
  except JShearError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  from jshear import hostmem
  hostmem.reexec_with_huge_pages()
  sys.exit(main())
