"""Read a built multi-domain corpus: `<root>/<domain>/*.txt`, one document per file.

The corpus itself is built and cached by `jshear.assets.corpus_dir()`, which returns `root`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from jshear.errors import check


def domain_dirs(root: str | Path) -> dict[str, str]:
  """{domain: its directory}, sorted by domain."""
  root = Path(root)
  return {d.name: str(d) for d in sorted(root.iterdir()) if d.is_dir()}


def domain_files(root: str | Path, domain: str) -> list[Path]:
  """The domain's document files, sorted."""
  files = sorted((Path(root) / domain).glob("*.txt"))
  check(files, f"{Path(root) / domain}: no *.txt documents (is {root} a jshear corpus?)")
  return files


def iter_documents(root: str | Path, domain: str) -> Iterable[str]:
  for f in domain_files(root, domain):
    yield f.read_text(encoding="utf-8")
