"""Raw text sources: find a domain's files and read their documents.

A `.txt` file is one document; `.jsonl` holds one JSON object per line with a
`text` field; parquet holds a `text` column. `.gz` is undone first. Reading is
strict UTF-8: the caller skips and counts a file that raises
UnicodeDecodeError instead of training on mojibake.
"""

import glob
import gzip
import json
import os

from jshear.errors import JShearError

SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet")


def _supported(path: str) -> bool:
  return path.endswith(SUFFIXES)


def list_files(spec: str) -> tuple[str, list[str]]:
  """(root, sorted files) for a directory (walked recursively) or a glob.

  root is what document keys are made relative to, so the eval split does not
  depend on where the corpus sits on disk.
  """
  if os.path.isdir(spec):
    root = spec
    found = []
    for d, subdirs, names in os.walk(spec):
      subdirs.sort()
      found += [os.path.join(d, n) for n in names]
  else:
    found = glob.glob(spec, recursive=True)
    # The root is the part of the pattern before its first wildcard.
    cut = min([i for i, ch in enumerate(spec) if ch in "*?["] or [len(spec)])
    root = os.path.dirname(spec[:cut]) or "."
  files = sorted(f for f in found if os.path.isfile(f) and _supported(f))
  return root, files


def _open_bytes(path: str) -> bytes:
  if path.endswith(".gz"):
    with gzip.open(path, "rb") as f:
      return f.read()
  with open(path, "rb") as f:
    return f.read()


def _jsonl_documents(path: str, text: str, key: str) -> list[str]:
  docs = []
  for lineno, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise JShearError(f"{path}:{lineno}: expected a JSON object, got invalid JSON ({e})") from None
    if not isinstance(row, dict) or not isinstance(row.get(key), str):
      got = sorted(row) if isinstance(row, dict) else type(row).__name__
      raise JShearError(f"{path}:{lineno}: expected a string field '{key}', got {got}")
    docs.append(row[key])
  return docs


def _parquet_documents(path: str, key: str) -> list[str]:
  try:
    import pyarrow.parquet as pq  # optional: only parquet corpora need it
  except ImportError:
    raise JShearError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
  names = pq.read_schema(path).names
  if key not in names:
    raise JShearError(f"{path}: expected a column '{key}', got columns {names}")
  return [t for t in pq.read_table(path, columns=[key]).column(key).to_pylist() if t is not None]


def read_documents(path: str, key: str = "text") -> tuple[list[str], bytes]:
  """(documents, raw bytes) of one file; the bytes are for hashing the input.

  Raises UnicodeDecodeError for a file that is not valid UTF-8.
  """
  if path.endswith(".parquet"):
    with open(path, "rb") as f:
      raw = f.read()
    return _parquet_documents(path, key), raw
  raw = _open_bytes(path)
  text = raw.decode("utf-8")  # strict: raises on bad bytes
  if path.endswith((".jsonl", ".jsonl.gz")):
    return _jsonl_documents(path, text, key), raw
  return [text], raw
