"""jshear.atomic: a file or dir appears whole under its name or not at all, fsync'd."""

import json
import os
import stat

import pytest

from jshear import atomic
from jshear.errors import JShearError


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


@pytest.fixture
def fsyncs(monkeypatch):
  """Records every os.fsync as (kind, inode, path it was taken at): kind 'dir' or 'file'."""
  calls = []
  real = os.fsync

  def record(fd):
    st = os.fstat(fd)
    calls.append(("dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
    real(fd)

  monkeypatch.setattr(os, "fsync", record)
  return calls


def _leftovers(d) -> list[str]:
  return sorted(p for p in os.listdir(d) if p.startswith("."))


# ---- files ---------------------------------------------------------------------------------
def test_write_fsyncs_file_then_dir_and_is_not_private(tmp_path, fsyncs):
  path = tmp_path / "sub" / "x.txt"           # a missing parent is created
  with atomic.atomic_write(path) as f:
    f.write("new")
  assert path.read_text() == "new"
  file_ino, dir_ino = path.stat().st_ino, path.parent.stat().st_ino
  assert ("file", file_ino) in fsyncs                       # the data, before the rename
  assert fsyncs[-1] == ("dir", dir_ino)                     # the rename, after it
  assert fsyncs.index(("file", file_ino)) < len(fsyncs) - 1
  assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
  assert _leftovers(path.parent) == []


def test_error_midway_keeps_old_file_and_leaves_no_temp(tmp_path, fsyncs):
  path = tmp_path / "x.bin"
  path.write_bytes(b"old")
  with pytest.raises(RuntimeError, match="midway"):
    with atomic.atomic_write(path, "wb") as f:
      f.write(b"half of the new")
      f.flush()
      raise RuntimeError("midway")
  assert path.read_bytes() == b"old"
  assert os.listdir(tmp_path) == ["x.bin"]
  assert not [c for c in fsyncs if c[0] == "dir"]           # nothing was renamed
  fresh = tmp_path / "fresh.bin"                            # absent before: stays absent
  with pytest.raises(RuntimeError):
    with atomic.atomic_write(fresh, "wb") as f:
      raise RuntimeError
  assert os.listdir(tmp_path) == ["x.bin"]


def test_write_json_and_modes(tmp_path):
  path = tmp_path / "a.json"
  atomic.write_json(path, {"b": 1, "a": [1, 2]}, sort_keys=True)
  assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
  assert path.read_text().index('"a"') < path.read_text().index('"b"')
  atomic.write_json(path, {"z": 0}, indent=None)            # replaces the old one
  assert path.read_text() == '{"z": 0}'
  with pytest.raises(ValueError, match="mode"):
    with atomic.atomic_write(path, "a"):
      pass
  assert _leftovers(tmp_path) == []


# ---- directories ---------------------------------------------------------------------------
def test_dir_fsyncs_every_file_and_the_parent(tmp_path, fsyncs):
  final = tmp_path / "out"
  with atomic.atomic_dir(final) as tmp:
    (tmp / "a.txt").write_text("a")
    (tmp / "sub").mkdir()
    (tmp / "sub" / "b.txt").write_text("b")
    os.symlink("a.txt", tmp / "link")                       # links are not followed
  assert (final / "sub" / "b.txt").read_text() == "b"
  synced = set(fsyncs)
  for p in (final / "a.txt", final / "sub" / "b.txt"):
    assert ("file", p.stat().st_ino) in synced, p
  for d in (final, final / "sub"):
    assert ("dir", d.stat().st_ino) in synced, d
  assert fsyncs[-1] == ("dir", tmp_path.stat().st_ino)     # the rename into the parent
  assert len([c for c in fsyncs if c[0] == "file"]) == 2
  assert stat.S_IMODE(final.stat().st_mode) == 0o777 & ~_umask()  # not private like mkdtemp
  assert _leftovers(tmp_path) == []


def test_dir_error_leaves_nothing(tmp_path, fsyncs):
  final = tmp_path / "out"
  with pytest.raises(RuntimeError):
    with atomic.atomic_dir(final) as tmp:
      (tmp / "half.txt").write_text("half")
      raise RuntimeError
  assert os.listdir(tmp_path) == []
  assert fsyncs == []


def test_dir_refuses_or_swaps_existing(tmp_path):
  final = tmp_path / "out"
  final.mkdir()
  (final / "old").write_text("old")
  ran = []
  with pytest.raises(JShearError, match=r"already exists \(pass --overwrite to replace it\)"):
    with atomic.atomic_dir(final, flag="--overwrite") as tmp:
      ran.append(tmp)                                       # refused before any work
  assert ran == [] and (final / "old").exists()
  with pytest.raises(ValueError):  # failure while overwriting keeps the old one intact
    with atomic.atomic_dir(final, overwrite=True) as tmp:
      (tmp / "new").write_text("new")
      raise ValueError
  assert sorted(p.name for p in final.iterdir()) == ["old"]
  with atomic.atomic_dir(final, overwrite=True) as tmp:
    (tmp / "new").write_text("new")
  assert sorted(p.name for p in final.iterdir()) == ["new"]
  assert _leftovers(tmp_path) == []


def test_dir_that_appears_meanwhile_is_not_replaced(tmp_path):
  final = tmp_path / "out"
  with pytest.raises(JShearError, match="already exists"):
    with atomic.atomic_dir(final) as tmp:
      (tmp / "mine").write_text("mine")
      final.mkdir()                                         # another writer won the race
      (final / "theirs").write_text("theirs")
  assert sorted(p.name for p in final.iterdir()) == ["theirs"]
  assert _leftovers(tmp_path) == []
