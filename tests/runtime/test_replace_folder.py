"""replace_folder: a new bundle or pruned checkpoint replaces the old one as one step against Ctrl-C."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from liteship import errors
from liteship.runtime import files


@pytest.fixture
def handler(monkeypatch):
    """The CLI's SIGINT handler with a fresh record, restored afterwards."""
    monkeypatch.setattr(errors, "_interrupted", [])
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    errors.install_interrupt_handler()
    yield
    signal.signal(signal.SIGINT, previous)


def folders(tmp_path):
    out, tmp = tmp_path / "b", tmp_path / ".b.partial-1"
    out.mkdir()
    (out / "model.tflite").write_text("old")
    tmp.mkdir()
    (tmp / "model.tflite").write_text("new")
    return out, tmp


def interrupt_at_rename(monkeypatch, number: int):
    """Sends the main thread a SIGINT right after the ``number``-th os.replace, as a Ctrl-C arriving mid-swap (to the
    thread itself: a signal for the process may go to one of TensorFlow's threads and reach Python only later)."""
    real, calls = os.replace, []

    def replace(src, dst):
        real(src, dst)
        calls.append((src, dst))
        if len(calls) == number:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    monkeypatch.setattr(files.os, "replace", replace)
    return calls


def test_the_new_folder_replaces_the_old_and_nothing_else_stays(tmp_path, handler):
    out, tmp = folders(tmp_path)
    files.replace_folder(tmp, out)
    assert (out / "model.tflite").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("number", [1, 2])
def test_ctrl_c_between_or_after_the_renames_puts_the_old_folder_back(tmp_path, handler, monkeypatch, number):
    out, tmp = folders(tmp_path)
    calls = interrupt_at_rename(monkeypatch, number)
    with pytest.raises(KeyboardInterrupt):
        files.replace_folder(tmp, out)
    assert len(calls) >= 2, "the swap stopped half way"
    assert (out / "model.tflite").read_text() == "old"
    assert (tmp / "model.tflite").read_text() == "new"  # back where the caller removes it
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.partial-1", "b"]
    assert errors.was_interrupted()


def test_a_ctrl_c_before_the_swap_moves_nothing(tmp_path, handler):
    out, tmp = folders(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with errors.signals_deferred():
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # held back by the OS
            files.replace_folder(tmp, out)
    assert (out / "model.tflite").read_text() == "old"
    assert (tmp / "model.tflite").read_text() == "new"


def test_a_handler_run_inside_the_block_records_and_the_block_end_raises(handler):
    """A SIGINT that reached the process just before the block may have its Python handler run inside it: that
    must not raise between two renames, only at the block's end."""
    reached_end = False
    with pytest.raises(KeyboardInterrupt):
        with errors.signals_deferred():
            errors._on_sigint(signal.SIGINT, None)  # what Python runs for a signal that arrived a moment before
            reached_end = True
    assert reached_end and errors.was_interrupted()


def test_a_ctrl_c_while_the_old_folder_is_removed_still_removes_it(tmp_path, handler, monkeypatch):
    """A Ctrl-C that reaches Python after the swap (sent to another thread, handled a moment later) lands while the
    old folder is being removed: the new folder stands, the old one still goes (it was left as .b.old-PID), and the
    run ends with the interrupt."""
    out, tmp = folders(tmp_path)
    real = files.shutil.rmtree

    def rmtree(path, *args, **kwargs):
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        real(path, *args, **kwargs)

    monkeypatch.setattr(files.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        files.replace_folder(tmp, out)
    assert (out / "model.tflite").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert errors.was_interrupted()
