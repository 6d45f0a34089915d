"""Writing a file or a directory whole: it appears complete under its name or not at all.

  with atomic_write(path, "wb") as f: np.save(f, x)     a file
  write_json(path, obj)                                   a JSON file
  with atomic_dir(path, overwrite) as tmp: ...fill tmp   a directory

Each is built under a hidden temporary name beside its final one (same filesystem, so the
rename is atomic), fsync'd, renamed into place, and then the parent directory is fsync'd, so
neither a killed process nor a crash of the machine leaves a half-written result under the
final name. On an error the temporary is removed and an existing result is left untouched.
Leftover temporaries of a killed process end in ".tmp" (files) or ".partial" (dirs).

Bottom layer: stdlib and jshear.errors only. Nothing here knows about processes; a
multi-process caller decides which process writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import IO, Iterator

from jshear.errors import JShearError


def remove(path: str | os.PathLike) -> None:
  """Remove a file, link or directory tree, if there is one."""
  path = Path(path)
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path, ignore_errors=True)
  elif path.exists() or path.is_symlink():
    path.unlink()


def fsync_dir(path: str | os.PathLike) -> None:
  """Make a directory's entries (a rename into it, a new file) durable."""
  fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
  """fsync every regular file and directory under `root` (links are not followed)."""
  for d, _, files in os.walk(root, topdown=False):
    for name in files:
      p = os.path.join(d, name)
      if os.path.islink(p):
        continue
      fd = os.open(p, os.O_RDONLY)
      try:
        os.fsync(fd)
      finally:
        os.close(fd)
    fsync_dir(d)


def _temp_beside(path: str, suffix: str) -> str:
  d, name = os.path.split(path)
  return os.path.join(d, f".{name}.{secrets.token_hex(4)}{suffix}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = None
                 ) -> Iterator[IO]:
  """Yield a file open for writing (`mode` "w" or "wb"); when the block succeeds it is
  flushed, fsync'd and renamed to `path`. On an error `path` keeps its old content (or stays
  absent) and the temporary file is removed. The parent dir is created if missing."""
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
  path = os.path.abspath(os.fspath(path))
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = _temp_beside(path, ".tmp")
  # 0o666 & ~umask, like open(): the result is no more private than a plain write's.
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, mode, encoding=encoding or (None if "b" in mode else "utf-8")) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise
  fsync_dir(parent)


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 2,
               sort_keys: bool = False) -> None:
  """`json.dump(obj)` to `path` through `atomic_write`."""
  with atomic_write(path) as f:
    json.dump(obj, f, indent=indent, sort_keys=sort_keys)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False,
               flag: str = "overwrite=True") -> Iterator[Path]:
  """Yield an empty temp dir beside `path`; when the block succeeds, every file in it is
  fsync'd and it is renamed to `path`. On an error it is removed, so `path` never exists
  half-written.

  An existing `path` is refused (`JShearError` naming `flag`, the caller's way to say
  overwrite) before the block runs, and again before the rename should one have appeared
  meanwhile. With `overwrite` it is swapped out only after the new one is complete.
  """
  final = Path(path).absolute()
  refuse = f"output {final} already exists (pass {flag} to replace it)"
  if final.exists() and not overwrite:
    raise JShearError(refuse)
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(_temp_beside(str(final), ".partial"))
  os.mkdir(tmp, 0o777)  # umask applies: the result is no more private than a plain mkdir's
  try:
    yield tmp
    fsync_tree(tmp)
    if final.exists():
      if not overwrite:
        raise JShearError(refuse)
      old = final.with_name(f".{final.name}.{os.getpid()}.old")
      remove(old)
      os.rename(final, old)
      os.rename(tmp, final)
      remove(old)
    else:
      os.rename(tmp, final)
    fsync_dir(final.parent)
  finally:
    remove(tmp)
