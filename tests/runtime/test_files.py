"""The one atomic write: the new file whole or the old one untouched, flushed to disk before the rename, and no
temporary file left after any failure."""

from __future__ import annotations

import os

import pytest

from liteship.runtime.files import atomic_path, write_atomic, write_json_atomic


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_replaces_after_flushing_to_disk(tmp_path, monkeypatch):
    target = tmp_path / "out.txt"
    target.write_text("old")
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                  real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("replace", str(a), str(b))), real_replace(a, b))[1])
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.txt.")  # beside the target: same file system
        tmp.write_text("new")
        assert target.read_text() == "old"
    assert target.read_text() == "new" and names(tmp_path) == ["out.txt"]
    assert calls == [("fsync", str(tmp)), ("replace", str(tmp), str(target))]


@pytest.mark.parametrize("failure", [RuntimeError("writer failed"), KeyboardInterrupt()])
def test_a_failed_block_leaves_the_old_file_and_no_temporary(tmp_path, failure):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(type(failure)):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise failure
    assert target.read_bytes() == b"old" and names(tmp_path) == ["out.bin"]


def test_a_failed_rename_leaves_no_temporary(tmp_path):
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # a non-empty folder cannot be replaced by a file
    with pytest.raises(OSError):
        write_atomic(target, b"data")
    assert names(tmp_path) == ["taken"] and names(target) == ["inside"]


def test_write_helpers_create_folders_when_asked(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "a" / "x.txt", "text")
    assert names(tmp_path) == []
    assert write_atomic(tmp_path / "a" / "x.txt", "tëxt", mkdir=True).read_text(encoding="utf-8") == "tëxt"
    path = write_json_atomic(tmp_path / "b" / "c" / "r.json", {"k": [1, 2]})
    assert path.read_text() == '{\n  "k": [\n    1,\n    2\n  ]\n}\n'
