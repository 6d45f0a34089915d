"""A reference model's mean NLL for every row or document of a prepared dir's split.

  python -m jshear.data score --model=REF --data=PREPARED --out=SCORES \\
      [--unit=row|document] [--split=train] [--batch_size=8]

The first step of perplexity-based data selection (Ankner et al. 2024): a small reference
model scores the data, and `python -m jshear.data select` keeps a band of the scores.

unit=row: a unit is a packed row, its score the mean next-token NLL of its scored tokens
(the training loss's targets: inside one document, never into padding). unit=document: a
unit is one document's piece in one row, identity (row, segment id), its score the mean over
that piece's targets. Packing cuts documents across rows, so a document spanning two rows
gives two units scored apart (the second piece without the first's context); a piece of one
token has no target and no score (NaN; select never keeps it).

Scores come from `jshear.model.loss.row_nll`, jitted on a data-parallel mesh of every device
(the reference model is small: its weights are replicated). Document scores use its
`weights`: one weight mask per segment id, vmapped, so the forward (which does not depend on
the weights) runs once per batch. --batch_size is rows per device: every device scores a
[batch_size, T] block whatever their number, so a row meets the same computation in the same
slot and 1 and 8 devices give the same bits (a global batch split 8 ways changes the
per-device shape, and XLA's CPU matmuls then round differently, by ~1e-5 of a row's NLL).

SCORES/scores.json records the data dir (path and manifest hash), split, unit, the model (path
and hashes of its weights and config) and per domain the file of its arrays:
SCORES/<domain>.npz holds row, segment (0 for rows), nll (the sum), tokens (scored targets),
score (nll / tokens, float64). Resumable: rows are scored in chunks of --chunk_rows rows per
domain, each written whole to SCORES/_chunks/ (jshear.atomic) as it finishes; a rerun of the
same command scores only the chunks missing, with the same batches, so the final arrays are
those of an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jshear import model_io
from jshear import sharding as shd
from jshear.atomic import atomic_write, write_json
from jshear.convert.hf_import import read_model
from jshear.data import mixture, view
from jshear.data.prepare import check_tokenizer, load_manifest
from jshear.data.shards import positions_from_segments
from jshear.errors import JShearError
from jshear.model.loss import row_nll, token_targets

FORMAT = "jshear.scores.v1"
UNITS = ("row", "document")
CHUNKS = "_chunks"


# -- the model ----------------------------------------------------------------

def check_model_tokenizer(model_dir: str, manifest: dict, data_dir: str) -> None:
  """The reference model must read the data's token ids as the data's tokenizer wrote them."""
  tok_dir = model_io.tokenizer_dir(model_dir)
  if tok_dir is None:
    raise JShearError(f"--model={model_dir}: has no tokenizer/, so its vocabulary cannot be "
                      f"checked against the data's")
  tok = model_io.load_tokenizer(tok_dir, label=f"--model={model_dir}")
  try:
    check_tokenizer(manifest["tokenizer"], tok, data_dir)
  except JShearError as e:
    raise JShearError(f"--model={model_dir}: its tokenizer is not the data's: {e}") from None


def model_record(model_dir: str, cfg, params) -> dict:
  return {"path": os.path.abspath(model_dir),
          "kind": "jshear" if model_io.is_jshear_dir(model_dir) else "hf",
          "params_hash": model_io.params_fingerprint(params),
          "config_hash": hashlib.sha256(cfg.to_json().encode()).hexdigest()[:16]}


# -- scoring ------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _row_fn(cfg, mesh):
  return jax.jit(lambda p, b: row_nll(p, b, cfg=cfg), out_shardings=shd.replicated(mesh))


@functools.lru_cache(maxsize=16)
def _doc_fn(cfg, mesh, n_segs: int):
  """Per (segment id 1..n_segs, row): (NLL sum, targets) of that segment's piece."""
  def fn(p, b):
    _, w = token_targets(b)
    ids = jnp.arange(1, n_segs + 1, dtype=b["segment_ids"].dtype)
    ws = w[None] * (b["segment_ids"][None] == ids[:, None, None])
    return jax.vmap(lambda wi: row_nll(p, b, cfg=cfg, weights=wi))(ws)

  return jax.jit(fn, out_shardings=shd.replicated(mesh))


def _bucket(n: int) -> int:
  """Segment slots of a batch: a power of two, so few shapes compile."""
  return 1 << max(0, int(n) - 1).bit_length()


def score_rows(rows: np.ndarray, unit: str, cfg, params, mesh) -> dict:
  """Unit arrays of a block of rows [n, 2, T] (n a multiple of the mesh's data size); every
  process passes the whole block and feeds its own slice."""
  P, p_i = jax.process_count(), jax.process_index()
  per = len(rows) // P
  mine = rows[p_i * per:(p_i + 1) * per]
  seg = np.ascontiguousarray(mine[:, 1])
  b = shd.host_local_batch_to_global(
      {"tokens": np.ascontiguousarray(mine[:, 0]), "segment_ids": seg,
       "positions": positions_from_segments(seg)}, mesh)
  segs = rows[:, 1]
  if unit == "row":
    nll, cnt = (shd.to_host(x) for x in _row_fn(cfg, mesh)(params, b))
    return {"row": np.arange(len(rows)), "segment": np.zeros(len(rows), np.int64),
            "nll": nll, "tokens": cnt}
  k = int(segs.max()) if segs.size else 0
  nll, cnt = (shd.to_host(x) for x in _doc_fn(cfg, mesh, _bucket(k))(params, b))
  held = np.zeros((len(rows), nll.shape[0] + 1), bool)  # the segment ids each row holds
  held[np.arange(len(rows))[:, None], segs] = True
  r, s = np.nonzero(held[:, 1:])
  return {"row": r, "segment": s + 1, "nll": nll[s, r], "tokens": cnt[s, r]}


def _batches(src, start: int, stop: int, batch_size: int):
  """Rows [start, stop) of a domain in batches of `batch_size`, the last one padded with
  all-padding rows (no targets) so every batch has one shape."""
  for lo in range(start, stop, batch_size):
    hi = min(lo + batch_size, stop)
    rows = np.stack([np.asarray(src[i]) for i in range(lo, hi)])
    if hi - lo < batch_size:
      rows = np.concatenate([rows, np.zeros((batch_size - (hi - lo),) + rows.shape[1:], rows.dtype)])
    yield lo, hi, rows


def score_chunk(src, start: int, stop: int, unit: str, cfg, params, mesh, batch_size: int,
                on_batch=None) -> dict:
  parts = []
  for lo, hi, rows in _batches(src, start, stop, batch_size):
    u = score_rows(rows, unit, cfg, params, mesh)
    keep = u["row"] < hi - lo
    parts.append({k: (v[keep] + lo if k == "row" else v[keep]) for k, v in u.items()})
    if on_batch is not None:
      on_batch(hi - lo)
  out = {k: np.concatenate([p[k] for p in parts]) for k in ("row", "segment", "nll", "tokens")}
  out["row"], out["segment"] = out["row"].astype(np.int64), out["segment"].astype(np.int64)
  out["nll"], out["tokens"] = out["nll"].astype(np.float32), out["tokens"].astype(np.float32)
  return out


def _save_chunk(path: str, arrays: dict) -> None:
  with atomic_write(path, "wb") as f:
    np.savez(f, **arrays)


def _with_score(a: dict) -> dict:
  nll, tok = a["nll"].astype(np.float64), a["tokens"].astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    score = np.where(tok > 0, nll / np.where(tok > 0, tok, 1), np.nan)
  return dict(a, score=score)


# -- the driver ---------------------------------------------------------------

def _chunk_path(out: str, name: str, start: int) -> str:
  return os.path.join(out, CHUNKS, f"{name}-{start:010d}.npz")


def _refuse_changed(path: str, want: dict, got: dict) -> None:
  for key in sorted(set(want) | set(got)):
    if want.get(key) != got.get(key):
      raise JShearError(f"{path}: this scores dir was started with a different '{key}' "
                        f"({want.get(key)!r}, now {got.get(key)!r}); use a fresh --out or delete it")


def score(model_dir: str, data_dir: str, out: str, unit: str = "row", split: str = "train",
          batch_size: int = 8, chunk_rows: int = 1024, progress: bool = True) -> dict:
  """Scores every unit of `split` into SCORES dir `out` (resuming a killed run); returns
  the scores record (scores.json)."""
  if unit not in UNITS:
    raise JShearError(f"--unit: expected one of {UNITS}, got '{unit}'")
  if split not in mixture.SPLITS:
    raise JShearError(f"--split: expected one of {mixture.SPLITS}, got '{split}'")
  if not os.path.isdir(model_dir):
    raise JShearError(f"--model={model_dir}: no such directory")
  manifest = load_manifest(data_dir)
  check_model_tokenizer(model_dir, manifest, data_dir)
  vocab = model_io.read_model_config(model_dir).vocab_size
  if vocab < manifest["tokenizer"]["vocab_size"]:
    raise JShearError(f"--model={model_dir}: has {vocab} embeddings, fewer than the data's "
                      f"{manifest['tokenizer']['vocab_size']} token ids")
  if batch_size <= 0:
    raise JShearError(f"--batch_size: expected > 0 rows per device, got {batch_size}")
  if chunk_rows <= 0:
    raise JShearError(f"--chunk_rows: expected > 0, got {chunk_rows}")
  # Each device scores `batch_size` rows per forward, so a row meets the same computation,
  # in the same slot, on any number of devices; chunks start at whole device batches.
  chunk_rows = -(-chunk_rows // batch_size) * batch_size
  mesh = shd.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  global_batch = batch_size * mesh.shape["data"]
  cfg, params = read_model(model_dir)
  sources = mixture.domain_sources(data_dir, split)
  run = {"format": FORMAT, "data": {"path": os.path.abspath(data_dir),
                                    "manifest": view.manifest_id(data_dir),
                                    "inputs_hash": manifest.get("inputs_hash")},
         "split": split, "unit": unit, "model": model_record(model_dir, cfg, params),
         "batch_size": batch_size, "chunk_rows": chunk_rows}
  done_path = os.path.join(out, "scores.json")
  if os.path.exists(done_path):
    with open(done_path) as f:
      done = json.load(f)
    _refuse_changed(done_path, {k: done.get(k) for k in run}, run)
    return done
  if os.path.exists(out) and not os.path.isdir(out):
    raise JShearError(f"--out={out}: exists and is not a directory")
  run_path = os.path.join(out, CHUNKS, "run.json")
  if os.path.exists(run_path):
    with open(run_path) as f:
      _refuse_changed(run_path, json.load(f), run)
  elif os.path.isdir(out) and os.listdir(out):
    raise JShearError(f"--out={out}: exists and is not a scores dir; use a fresh --out")
  primary = jax.process_index() == 0
  if primary:
    write_json(run_path, run)

  params = jax.device_put(params, shd.replicated(mesh))
  todo = [(d, s) for d in sorted(sources) for s in range(0, len(sources[d]), chunk_rows)
          if not os.path.exists(_chunk_path(out, d, s))]
  seq_len = manifest["seq_len"]
  total = sum(min(chunk_rows, len(sources[d]) - s) for d, s in todo) * seq_len
  bar = tqdm(total=total, unit="tok", unit_scale=True, desc=f"score {unit}s",
                                disable=not progress or not primary or not total)
  t0 = time.perf_counter()
  try:
    with jax.set_mesh(mesh):
      for d, s in todo:
        bar.set_postfix(domain=d)
        arrays = score_chunk(sources[d], s, min(s + chunk_rows, len(sources[d])), unit, cfg,
                             params, mesh, global_batch, lambda n: bar.update(n * seq_len))
        if primary:
          _save_chunk(_chunk_path(out, d, s), arrays)
  finally:
    bar.close()
  if total and progress and primary:
    dt = time.perf_counter() - t0
    tqdm.write(f"scored {total:,} row tokens in {dt:.1f} s ({total / max(dt, 1e-9):,.0f} tokens/s, "
               "compilation included)", file=sys.stderr)
  return _assemble(out, run, sources, chunk_rows) if primary else run


def _assemble(out: str, run: dict, sources: dict, chunk_rows: int) -> dict:
  """Per-domain arrays from the chunks, then scores.json (last: it marks the dir done)."""
  domains = {}
  for d in sorted(sources):
    parts = []
    for s in range(0, len(sources[d]), chunk_rows):
      with np.load(_chunk_path(out, d, s)) as z:
        parts.append({k: z[k] for k in z.files})
    keys = ("row", "segment", "nll", "tokens")
    a = _with_score({k: np.concatenate([p[k] for p in parts]) if parts else
                     np.zeros(0, np.float32 if k in ("nll", "tokens") else np.int64) for k in keys})
    _save_chunk(os.path.join(out, f"{d}.npz"), a)
    ok = np.isfinite(a["score"])
    domains[d] = {"file": f"{d}.npz", "rows": len(sources[d]), "units": int(len(a["score"])),
                  "scored": int(ok.sum()), "tokens": int(a["tokens"].sum()),
                  "mean": float(a["score"][ok].mean()) if ok.any() else None}
  rec = dict(run, domains=domains)
  write_json(os.path.join(out, "scores.json"), rec, indent=1)
  shutil.rmtree(os.path.join(out, CHUNKS), ignore_errors=True)
  return rec


# -- reading ------------------------------------------------------------------

def load_scores(scores_dir: str) -> tuple[dict, dict]:
  """(scores.json, {domain: arrays}) of a finished scores dir."""
  path = os.path.join(scores_dir, "scores.json")
  if not os.path.isfile(path):
    hint = " (unfinished: rerun its score command)" if os.path.isdir(os.path.join(scores_dir, CHUNKS)) else ""
    raise JShearError(f"--scores={scores_dir}: expected a scores dir from `python -m jshear.data "
                      f"score`, got no scores.json{hint}")
  with open(path) as f:
    rec = json.load(f)
  if rec.get("format") != FORMAT:
    raise JShearError(f"{path}: expected format '{FORMAT}', got '{rec.get('format')}'")
  arrays = {}
  for d, e in rec["domains"].items():
    with np.load(os.path.join(scores_dir, e["file"])) as z:
      arrays[d] = {k: z[k] for k in z.files}
  return rec, arrays


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m jshear.data score", description=__doc__.split("\n")[0])
  ap.add_argument("--model", required=True, help="reference model: a jshear model dir or an HF dir")
  ap.add_argument("--data", required=True, help="prepared dir (python -m jshear.data.prepare) or a view")
  ap.add_argument("--out", required=True, help="scores dir (rerun the same command to resume)")
  ap.add_argument("--unit", default="row", help="row (packed rows) or document (pieces per row)")
  ap.add_argument("--split", default="train", help="train, valid, test or eval")
  ap.add_argument("--batch_size", type=int, default=8,
                  help="rows per device per forward (the same on any number of devices)")
  ap.add_argument("--chunk_rows", type=int, default=1024, help="rows per resumable chunk of a domain")
  args = ap.parse_args(argv)
  try:
    rec = score(args.model, args.data, args.out, args.unit, args.split, args.batch_size,
                args.chunk_rows)
  except JShearError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for d, e in rec.get("domains", {}).items():
    mean = "-" if e["mean"] is None else f"{e['mean']:.4f}"
    print(f"{d}: {e['scored']:,} of {e['units']:,} {rec['unit']}s scored, mean NLL {mean}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
