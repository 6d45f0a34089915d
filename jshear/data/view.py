"""A view of a prepared dir: some of its training rows, read like the dir itself.

  VIEW/manifest.json        the source's manifest (same format, tokenizer, seq_len, domains;
                            the held-out splits' shards named by absolute path), each domain's
                            train entry replaced by {"sequences", "source_sequences", "index"},
                            and a "view" record: what was kept, how, and from which source
  VIEW/index/<domain>.npz   rows: the kept train rows of the source (ascending); for a view of
                            documents also piece_rows, piece_segs: the kept (row, segment id)
                            pieces, sorted. A kept row then serves only its kept pieces: the
                            others' segment ids read as 0 (padding: no loss, and no kept token
                            attends to them), so the rows train on exactly the kept documents.

`jshear.data.mixture.domain_sources(VIEW, split)` gives the kept rows for "train" and the
source's own rows for valid/test/eval, so training, held-out evals and comparisons read a
view as they read any prepared dir. The source is named by path and pinned by the hash of its
manifest: a source prepared again since (its rows are other rows) is refused. A view's source
may itself be a view. The train entries have no "shards", so a reader that opens shard files
itself instead of going through `domain_sources` fails rather than reading every row.
"""

from __future__ import annotations

import json
import os

import numpy as np

from jshear.atomic import atomic_dir
from jshear.data.prepare import manifest_hash
from jshear.errors import JShearError

INDEX_DIR = "index"


def manifest_id(data_dir: str) -> str:
  """A prepared dir's (or a view's) identity: the hash of its manifest's bytes, 16 hex
  digits, as compare's cache keys and `prepare.manifest_hash` take it."""
  path = os.path.join(data_dir, "manifest.json")
  if not os.path.isfile(path):
    raise JShearError(f"{path}: expected a manifest from jshear.data.prepare, got no such file")
  return manifest_hash(data_dir)


def is_view(manifest: dict) -> bool:
  return "view" in manifest


def source_dir(view_dir: str, manifest: dict) -> str:
  """The source a view selects from, refused if it was prepared again since."""
  src = manifest["view"]["source"]
  path = src["path"] if os.path.isabs(src["path"]) else os.path.join(view_dir, src["path"])
  got = manifest_id(path)
  if got != src["manifest"]:
    raise JShearError(f"{view_dir}: this view selects rows of {path} as it was "
                      f"(manifest {src['manifest']}), but that dir has changed since "
                      f"(manifest {got}); select again from its new scores")
  return path


class Selected:
  """Random-access rows `rows` of `base` (a domain's train source); with `pieces`
  (piece_rows, piece_segs) only those segments of each row keep their ids."""

  def __init__(self, base, rows: np.ndarray, pieces: tuple[np.ndarray, np.ndarray] | None = None):
    self.base, self.rows = base, np.asarray(rows, np.int64)
    self.seq_len = getattr(base, "seq_len", 0)
    self.pieces = None if pieces is None else tuple(np.asarray(p, np.int64) for p in pieces)

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, i: int) -> np.ndarray:
    n = len(self.rows)
    r = int(self.rows[int(i) % n if n else int(i)])
    row = self.base[r]
    if self.pieces is None:
      return row
    prow, pseg = self.pieces
    lo, hi = np.searchsorted(prow, r, "left"), np.searchsorted(prow, r, "right")
    row = np.array(row)
    row[1] = np.where(np.isin(row[1], pseg[lo:hi]), row[1], 0)
    return row

  def __repr__(self) -> str:
    return f"Selected({len(self)} of {len(self.base)} rows)"


def train_sources(view_dir: str, manifest: dict, base: dict) -> dict:
  """The kept train rows of each domain, over `base` (the source's train sources)."""
  out = {}
  for name, entry in manifest["domains"].items():
    with np.load(os.path.join(view_dir, entry["train"]["index"])) as z:
      pieces = (z["piece_rows"], z["piece_segs"]) if "piece_rows" in z else None
      rows = z["rows"]
    if len(rows) and (rows.min() < 0 or rows.max() >= len(base[name])):
      raise JShearError(f"{view_dir}: domain '{name}' keeps row {int(rows.max())}, but its "
                        f"source has {len(base[name])} train rows")
    out[name] = Selected(base[name], rows, pieces)
  return out


def _view_manifest(source: str, m: dict, kept: dict, record: dict) -> dict:
  """The source's manifest with the kept train rows and the view record."""
  m = json.loads(json.dumps(m))
  for name, entry in m["domains"].items():
    for split in ("valid", "test", "eval"):
      for s in entry.get(split, {}).get("shards", []):
        s["file"] = os.path.abspath(os.path.join(source, s["file"]))
    entry.pop("stats", None)  # the source's training-row statistics, not the kept rows'
    k = kept[name]
    entry["train"] = {"sequences": int(len(k["rows"])),
                      "source_sequences": int(entry["train"]["sequences"]),
                      "index": f"{INDEX_DIR}/{name}.npz"}
    if "piece_rows" in k:
      entry["train"]["pieces"] = int(len(k["piece_rows"]))
  m["view"] = dict(record, source={"path": os.path.abspath(source), "manifest": manifest_id(source)})
  return m


def write_view(out: str, source: str, manifest: dict, kept: dict, record: dict,
               overwrite: bool = False, extra=None) -> dict:
  """Writes VIEW `out` (whole or not at all). kept: {domain: {"rows", optional "piece_rows",
  "piece_segs"}}, every domain of the source; record: what the view is (band, rate, ...).
  extra(tmp_dir): writes more files into the view before it is published (a report)."""
  missing = sorted(set(manifest["domains"]) - set(kept))
  if missing:
    raise JShearError(f"view of {source}: no kept rows given for domains {missing}")
  vm = _view_manifest(source, manifest, kept, record)
  with atomic_dir(out, overwrite, flag="--overwrite") as tmp:
    os.makedirs(os.path.join(tmp, INDEX_DIR))
    for name, k in kept.items():
      arrays = {key: np.asarray(v, np.int64) for key, v in k.items()}
      np.savez(os.path.join(tmp, vm["domains"][name]["train"]["index"]), **arrays)
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
      json.dump(vm, f, indent=1)
    if extra is not None:
      extra(str(tmp))
  return vm
