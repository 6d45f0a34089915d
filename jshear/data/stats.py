"""`python -m jshear.data stats DIR`: a prepared dir's per-domain token statistics and the
mixtures they imply (entropy.py), without re-tokenising.

  python -m jshear.data stats ~/.cache/jshear/prepared/local-v3-... [--temperature=0.5] [--json]

Prepare records the statistics in each domain's manifest entry; for a dir prepared before
that, they are counted from its training shards once and kept in `DIR/stats.json` (keyed on
the manifest's hash, so a re-prepared dir is counted again). A stage reads the same numbers
when its block says `domain_weights_from=entropy` or `entropy_softmax`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from jshear.atomic import write_json
import numpy as np

from jshear.data import entropy
from jshear.data.mixture import domain_sources
from jshear.data.prepare import load_manifest, manifest_hash
from jshear.errors import JShearError

CACHE = "stats.json"


def _cached(data_dir: str, key: dict) -> dict:
  path = os.path.join(data_dir, CACHE)
  try:
    with open(path) as f:
      got = json.load(f)
  except (OSError, ValueError):
    return {}
  return got.get("domains", {}) if got.get("key") == key else {}


def _train_rows(data_dir: str, m: dict, domain: str, chunk: int = 4096):
  """A domain's training rows a block at a time: its shards' memmaps, or for a selected view
  (no shard list: an index into its source) the rows `domain_sources` serves, in which the
  pieces a document view dropped read as padding."""
  entry = m["domains"][domain]["train"]
  if "shards" in entry:
    for s in entry["shards"]:
      yield np.load(os.path.join(data_dir, s["file"]), mmap_mode="r")
    return
  src = domain_sources(data_dir, "train")[domain]
  for a in range(0, len(src), chunk):
    yield np.stack([np.asarray(src[i]) for i in range(a, min(a + chunk, len(src)))])


def domain_stats(data_dir: str, buckets: int = entropy.DEFAULT_BUCKETS) -> dict:
  """{domain: statistics} of a prepared dir: the manifest's, else counted (and cached)."""
  m = load_manifest(data_dir)
  out = {d: e["stats"] for d, e in m["domains"].items()
         if "stats" in e and e["stats"].get("version") == entropy.VERSION
         and (not e["stats"]["hashed"] or e["stats"]["buckets"] == buckets)}
  missing = [d for d in m["domains"] if d not in out]
  if not missing:
    return out
  key = {"manifest": manifest_hash(data_dir), "buckets": buckets, "version": entropy.VERSION}
  cached = _cached(data_dir, key)
  for d in missing:
    if d not in cached:
      cached[d] = entropy.rows_stats(_train_rows(data_dir, m, d), m["tokenizer"]["vocab_size"],
                                     buckets)
  try:
    write_json(os.path.join(data_dir, CACHE), {"key": key, "domains": cached}, indent=1)
  except OSError:  # a read-only dir: counted again next time
    pass
  out.update({d: cached[d] for d in missing})
  return dict(sorted(out.items()))


def initial_weights(data_dir: str, mode: str, temperature: float = 1.0) -> dict:
  """A stage's initial mixture from the conditional entropies of `data_dir`'s domains."""
  st = domain_stats(data_dir)
  return entropy.entropy_weights({d: s["conditional_entropy"] for d, s in st.items()}, mode,
                                 temperature)


def table(st: dict, temperature: float) -> str:
  h = {d: s["conditional_entropy"] for d, s in st.items()}
  w_lin = entropy.entropy_weights(h, "entropy")
  w_soft = entropy.entropy_weights(h, "entropy_softmax", temperature)
  lines = ["| domain | tokens | H(X) | H(X_t+1 given X_t) | hashing bound | plug-in bias | "
           f"entropy | entropy_softmax (T={temperature:g}) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for d, s in st.items():
    lines.append(f"| {d} | {s['tokens']:,} | {s['unigram_entropy']:.3f} | "
                 f"{s['conditional_entropy']:.3f} | {s['conditional_entropy_bound']:.3f} | "
                 f"-{s['plugin_bias_estimate']:.3f} | "
                 f"{w_lin[d]:.3f} | {w_soft[d]:.3f} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m jshear.data stats",
                               description=__doc__.split("\n")[0])
  ap.add_argument("dir", help="a prepared dir (python -m jshear.data.prepare)")
  ap.add_argument("--temperature", type=float, default=1.0, help="entropy_softmax temperature")
  ap.add_argument("--buckets", type=int, default=entropy.DEFAULT_BUCKETS,
                  help="bigram hash buckets when counting (a power of two)")
  ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
  args = ap.parse_args(argv)
  try:
    if not args.temperature > 0:
      raise JShearError(f"--temperature: expected > 0, got {args.temperature}")
    if args.buckets < 2 or args.buckets & (args.buckets - 1):
      raise JShearError(f"--buckets: expected a power of two >= 2, got {args.buckets}")
    st = domain_stats(args.dir, args.buckets)
  except JShearError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.json:
    h = {d: s["conditional_entropy"] for d, s in st.items()}
    print(json.dumps({"domains": st, "weights": {
        "entropy": entropy.entropy_weights(h, "entropy"),
        "entropy_softmax": entropy.entropy_weights(h, "entropy_softmax", args.temperature)}},
        indent=1))
  else:
    print(table(st, args.temperature))
  return 0


if __name__ == "__main__":
  sys.exit(main())
