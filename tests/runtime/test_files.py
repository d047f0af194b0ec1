"""runtime/files: the one atomic write (the new file whole or the old one untouched, flushed to disk before the
rename, and no temporary file left after any failure) and the one UTF-8 text reader (errors naming the file)."""

from __future__ import annotations

import os

import pytest

from liteship.errors import ConvertError, LiteshipError, RuntimeLiteshipError
from liteship.runtime.files import atomic_path, read_text, write_atomic, write_json_atomic


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


@pytest.mark.parametrize("content, reason", [
    (None, "no such file"),
    ("folder", "is a folder, not a text file"),
    (b"ok\n\xff\xfe", "not UTF-8 text (invalid start byte at byte 3)"),
    (b"", "no text in it"),
    (b" \n\t\n", "no text in it"),
])
def test_read_text_names_the_file_and_why_in_one_line(tmp_path, content, reason):
    path = tmp_path / "in.txt"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ConvertError) as caught:
        read_text(path, what="--data", error=ConvertError, hint="give one text file")
    assert str(caught.value) == f"--data {path}: {reason}; give one text file"
    with pytest.raises(LiteshipError, match=rf"^{path}: {reason[:12]}"):  # no option: the path leads
        read_text(path)


def test_read_text_returns_the_text(tmp_path):
    (tmp_path / "t.txt").write_bytes("héllo\nwörld\n".encode())
    assert read_text(tmp_path / "t.txt", error=RuntimeLiteshipError) == "héllo\nwörld\n"
    (tmp_path / "e.txt").write_bytes(b"\n")
    assert read_text(tmp_path / "e.txt", empty_ok=True) == "\n"  # the caller's own check of the content says more


def test_every_text_reader_goes_through_it(tmp_path):
    """The labels of a converted classifier and of a BiT checkpoint: each error names its own option and the file."""
    from liteship.convert.bit.export import read_labels as bit_labels
    from liteship.convert.cli import read_labels

    missing, binary = tmp_path / "none.txt", tmp_path / "b.txt"
    binary.write_bytes(b"\xff")
    with pytest.raises(ConvertError, match=rf"^--labels {missing}: no such file; give one label per line$"):
        read_labels(missing)
    with pytest.raises(ConvertError, match=rf"^labels file {binary}: not UTF-8 text"):
        bit_labels(binary, 3)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ConvertError, match="^--labels .*empty.txt: no text in it"):
        read_labels(tmp_path / "empty.txt")
    with pytest.raises(ConvertError, match="has 0 labels but the checkpoint head has 3 classes"):  # its own count
        bit_labels(tmp_path / "empty.txt", 3)
    (tmp_path / "l.txt").write_text("cat\n\ndog\n")
    assert read_labels(tmp_path / "l.txt") == ["cat", "dog"]
