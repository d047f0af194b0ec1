"""Runs the real `liteship` console script as a subprocess and checks the CLI's promises for a failure:
the exit code, one last stderr line ``error: ...`` naming the file or option, no traceback, no internal error,
the old output intact and nothing partial left behind."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

LITESHIP = Path(sys.executable).with_name("liteship")
PARTIAL_PATTERNS = ("*.partial", "*.partial-*", ".*.partial*", "*.old-*", ".extract-*")


def command(*args) -> list[str]:
    entry = [str(LITESHIP)] if LITESHIP.is_file() else [sys.executable, "-m", "liteship.cli"]
    return [*entry, *map(str, args)]


def cli_env(tmp: Path, **extra) -> dict:
    """An environment whose $TMPDIR and cache are the test's own, so leftovers can be seen."""
    env = dict(os.environ)
    env.pop("LITESHIP_DEBUG", None)
    (tmp / "tmpdir").mkdir(exist_ok=True)
    env.update(TMPDIR=str(tmp / "tmpdir"), LITESHIP_CACHE=str(tmp / "cache"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(args, tmp: Path, *, timeout: float = 300, env: dict | None = None, cwd: Path | None = None):
    return subprocess.run(command(*args), capture_output=True, text=True, errors="replace", timeout=timeout,
                          env=env or cli_env(tmp), cwd=cwd or tmp)


def tree_digest(path: Path) -> str:
    """sha256 over names and contents of every file under path (or of the file itself)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def leftovers(*roots: Path) -> list[Path]:
    """Temporary files and folders a failed run must not leave: ours in $TMPDIR, partials beside outputs."""
    found = []
    for root in roots:
        if not root.exists():
            continue
        for pattern in PARTIAL_PATTERNS:
            found += list(root.rglob(pattern))
        found += [p for p in root.rglob("liteship-*") if p.is_dir()]
    return sorted(set(found))


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_failed_cleanly(result, *, exit_code: int, names=(), tmp: Path | None = None) -> None:
    where = f"\n--- stderr ---\n{result.stderr[-3000:]}\n--- stdout ---\n{result.stdout[-1000:]}"
    assert result.returncode == exit_code, f"exit {result.returncode}, expected {exit_code}{where}"
    assert "Traceback" not in result.stderr, f"a traceback{where}"
    assert "internal error" not in result.stderr, f"an internal error, not a user error{where}"
    line = last_line(result.stderr)
    if exit_code == 130:
        assert line == "error: interrupted", where
    else:
        assert line.startswith("error: "), f"last stderr line is {line!r}{where}"
    for name in names:
        assert str(name) in line, f"{name!r} is not named in {line!r}{where}"
    if tmp is not None:
        assert not leftovers(tmp), f"left behind: {leftovers(tmp)}{where}"


@dataclass
class Case:
    """One bad input. ``args`` may use {fx} (the shared fixture bundles) and {tmp} (the case's folder);
    ``setup(tmp, fx)`` prepares files; ``names`` must appear in the error line; ``keep`` paths must not change;
    ``absent`` texts must not appear on stderr (a stage the run must not have reached)."""

    id: str
    args: tuple
    names: tuple = ()
    exit_code: int = 1
    setup: object = None
    keep: tuple = ()
    env: dict = field(default_factory=dict)
    absent: tuple = ()


def interrupt_after(args, tmp: Path, *, when, env=None, timeout: float = 300):
    """Starts the CLI, waits until ``when(stderr_so_far)`` is true (or the process ends), sends SIGINT, and
    returns the completed process (stdout, stderr as text)."""
    import time

    proc = subprocess.Popen(command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or cli_env(tmp),
                            cwd=tmp, start_new_session=True)
    err = bytearray()
    os.set_blocking(proc.stderr.fileno(), False)
    deadline = time.monotonic() + timeout
    sent = False
    while proc.poll() is None and time.monotonic() < deadline:
        chunk = proc.stderr.read()
        if chunk:
            err += chunk
        if not sent and when(err.decode(errors="replace")):
            proc.send_signal(signal.SIGINT)
            sent = True
        time.sleep(0.02)
    out, rest = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    err += rest or b""
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(errors="replace"),
                                       err.decode(errors="replace")), sent
