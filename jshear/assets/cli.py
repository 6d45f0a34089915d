"""`python -m jshear.assets fetch [--only model,text,corpus,evalsets]` and `... where`."""

from __future__ import annotations

import argparse
import sys
import time

from jshear.assets.corpus import corpus_dir
from jshear.assets.eval_sets import eval_sets_dir
from jshear.assets.fetch import cache_root
from jshear.assets.heldout import heldout_text_path
from jshear.assets.smollm2 import smollm2_hf_dir
from jshear.errors import JShearError, check

ASSETS = ("model", "text", "corpus", "evalsets")
_FETCHERS = {"model": smollm2_hf_dir, "text": heldout_text_path, "corpus": corpus_dir,
             "evalsets": eval_sets_dir}


def fetch_all(only: tuple[str, ...] = ASSETS) -> dict[str, str]:
  """Ensure the named assets exist; returns {asset: path}."""
  bad = [a for a in only if a not in _FETCHERS]
  check(not bad, f"unknown asset(s) {bad}; known: {', '.join(ASSETS)}")
  return {a: _FETCHERS[a]() for a in only}


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m jshear.assets",
                               description="Fetch and cache the real assets jshear runs on.")
  sub = ap.add_subparsers(dest="cmd", required=True)
  f = sub.add_parser("fetch", help="download and prepare assets into $JSHEAR_CACHE")
  f.add_argument("--only", default=",".join(ASSETS),
                 help=f"comma-separated subset of {','.join(ASSETS)} (default: all)")
  sub.add_parser("where", help="print the cache root")
  args = ap.parse_args(argv)
  if args.cmd == "where":
    print(cache_root())
    return 0
  try:
    only = tuple(a.strip() for a in args.only.split(",") if a.strip())
    for a in only:
      t = time.time()
      path = fetch_all((a,))[a]
      print(f"{a}: {path} ({time.time() - t:.1f}s)", flush=True)
  except JShearError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0
