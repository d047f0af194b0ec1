"""Reading the user's small files (JSON documents, .npy/.npz arrays, text lists) with errors that name the file.

Every reader raises the caller's LiteshipError subclass with ``<file>: <reason>``; none lets a JSONDecodeError,
UnicodeDecodeError or numpy's EOFError escape as a traceback.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from liteship.errors import LiteshipError, check_interrupted, interrupt_pending, os_error_message, signals_deferred

_KINDS = {dict: "a JSON object", list: "a JSON list"}


def read_json(path: str | Path, *, kind: type = dict, error: type[LiteshipError] = LiteshipError) -> Any:
    """The JSON document in ``path``; raises ``error`` when it is unreadable, not UTF-8, not JSON, or not ``kind``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a JSON file") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if kind is not None and not isinstance(data, kind):
        raise error(f"{path}: expected {_KINDS.get(kind, kind.__name__)}, found {json_kind(data)}")
    return data


def read_text(path: str | Path, *, what: str = "", error: type[LiteshipError] = LiteshipError, hint: str = "",
              empty_ok: bool = False) -> str:
    """The UTF-8 text in ``path``; raises ``error`` as ``<what> <path>: <reason>[; <hint>]`` when it is missing, a
    folder, unreadable, not UTF-8, or holds no text (nothing but white space) unless ``empty_ok`` (for a caller
    whose own check of the content says more, e.g. how many tokens it needs)."""
    path = Path(path)
    where = f"{what} {path}" if what else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        reason = "no such file"
    except IsADirectoryError:
        reason = "is a folder, not a text file"
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    except OSError as exc:
        reason = f"cannot read it ({exc.strerror})"
    else:
        if empty_ok or text.strip():
            return text
        reason = "no text in it"
    raise error(f"{where}: {reason}" + (f"; {hint}" if hint else ""))


def json_kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def require(mapping: dict, key: str, kind: type | tuple, where: str, *, error: type[LiteshipError] = LiteshipError,
            minimum: float | None = None, optional: bool = False) -> Any:
    """``mapping[key]`` checked to be ``kind`` (and >= minimum for numbers); raises naming the file and key."""
    if key not in mapping or (optional and mapping[key] is None):
        if optional:
            return None
        raise error(f"{where}: lacks {key!r}")
    value = mapping[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(_KINDS.get(k, k.__name__) for k in kinds)
        raise error(f"{where}: {key!r} must be {names}, not {json_kind(value)} ({value!r:.40})")
    if minimum is not None and (isinstance(value, float) and not math.isfinite(value) or value < minimum):
        raise error(f"{where}: {key!r} must be at least {minimum}, not {value!r}")
    return value


def load_array(path: str | Path, *, error: type[LiteshipError] = LiteshipError):
    """The array in a .npy file, or the dict of arrays in a .npz; never pickles."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic.startswith(b"PK"):
            with np.load(path, allow_pickle=False) as data:
                return {name: np.asarray(data[name]) for name in data.files}
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        reason = str(exc) or type(exc).__name__
        kind = "an empty file" if path.stat().st_size == 0 else f"not a readable .npz/.npy array ({reason})"
        raise error(f"{path}: {kind}") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks (a model may be larger than the memory to spare)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---- temporary names that a killed run leaves behind, and the sweep that removes them later ---------------------
# Every temporary file or folder liteship makes carries its process id: ``.NAME.<pid>-<random>.partial`` beside the
# output, ``liteship-<kind>-<pid>-<random>`` in $TMPDIR. A later run removes the ones whose process is gone (after
# SIGKILL or a power cut nothing else would), and never touches another live run's or another user's.

PARTIAL_SUFFIX = ".partial"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def sweep_stale(folder: str | Path, prefix: str, suffix: str = "") -> list[Path]:
    """Removes ``folder/<prefix><pid>-...<suffix>`` entries of this user whose process no longer runs."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in entries:
        name = entry.name
        if not name.startswith(prefix) or not name.endswith(suffix):
            continue
        pid_text = name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        try:
            if uid is not None and entry.lstat().st_uid != uid:
                continue
        except OSError:
            continue
        _remove(entry)
        removed.append(entry)
    return removed


def partial_name(path: Path) -> Path:
    """A unique temporary sibling of ``path`` that ``sweep_stale`` recognizes once its process is gone."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{PARTIAL_SUFFIX}")


def sweep_partials(path: Path) -> list[Path]:
    return sweep_stale(path.parent, f".{path.name}.", PARTIAL_SUFFIX)


def check_output_path(path: str | Path, *, option: str = "", error: type[LiteshipError] = LiteshipError) -> Path:
    """Refuses an output whose folder is missing or is a file, before any work is done."""
    path = Path(path)
    label = f"{option} {path}" if option else str(path)
    parent = path.parent
    if not parent.exists():
        raise error(f"{label}: folder {parent} does not exist")
    if not parent.is_dir():
        raise error(f"{label}: {parent} is not a folder")
    if path.is_dir():
        raise error(f"{label}: is a folder")
    return path


def nearest_existing_folder(path: Path) -> Path:
    """The closest ancestor of ``path`` that exists: where creating its folders would start (may be a file)."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    return ancestor


def check_creatable(path: str | Path, *, option: str = "", error: type[LiteshipError] = LiteshipError) -> Path:
    """Refuses an output that cannot be made even by creating its folders: one under a file, or a folder."""
    path = Path(path)
    label = f"{option} {path}" if option else str(path)
    if path.is_dir():
        raise error(f"{label}: is a folder")
    ancestor = nearest_existing_folder(path)
    if not ancestor.is_dir():
        raise error(f"{label}: {ancestor} is a file, not a folder")
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, *, mkdir: bool = False) -> Iterator[Path]:
    """The one way liteship replaces a file: yields a temporary path beside ``path`` to write; when the block
    succeeds the temporary file is flushed to disk and renamed onto ``path`` in one step, so a reader (or a power
    cut) sees the old file or the new one, never half of one. On any failure or interrupt it is removed and
    ``path`` is left as it was; its name carries the pid, so a later run sweeps it if this process is killed.
    ``mkdir`` creates the missing folders first."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def write_atomic(path: str | Path, data: bytes | str, *, mkdir: bool = False) -> Path:
    """Replaces ``path`` with ``data`` (text as UTF-8) through atomic_path."""
    with atomic_path(path, mkdir=mkdir) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON in ``path`` (its folders created), through atomic_path."""
    return write_atomic(path, json.dumps(data, indent=2) + "\n", mkdir=True)


@contextmanager
def atomic_output(path: str | Path, *, option: str = "", error: type[LiteshipError] = LiteshipError):
    """atomic_path for a user's output: checked first, stale temporaries swept, the permissions a plain new file
    gets under the umask, and an OSError (a full disk, a read-only folder) as ``error`` naming the output."""
    path = check_output_path(path, option=option, error=error)
    sweep_partials(path)
    tmp = None
    try:
        with atomic_path(path) as tmp:
            yield tmp
            os.chmod(tmp, 0o666 & ~current_umask())
            check_interrupted()
    except OSError as exc:  # name the output, not the temporary file
        if exc.filename is not None and exc.filename not in (str(tmp), tmp, str(path), path):
            raise
        label = f"{option} {path}" if option else str(path)
        raise error(f"{label}: {os_error_message(exc).split(': ', 1)[-1]}") from exc


def replace_folder(tmp: Path, out: Path) -> None:
    """Moves the finished folder ``tmp`` to ``out``, replacing an old ``out``, as one step against Ctrl-C: SIGINT is
    held back during the renames, and one that came meanwhile puts the old folder back (the new one returns to
    ``tmp`` for the caller to remove) before it is raised. The old folder is removed only once the new one stays.
    A signal the kernel hands to another thread reaches Python a moment later: if that is after the swap, the swap
    stands, the old folder is still removed (with SIGINT held back again), and the run ends with 130."""
    old, moved = None, False
    try:
        with signals_deferred():
            if interrupt_pending():
                raise KeyboardInterrupt
            if out.exists():
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                os.replace(out, old)
            os.replace(tmp, out)
            moved = True
            if interrupt_pending():
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        if moved:
            with signals_deferred():
                os.replace(out, tmp)
                if old is not None:
                    os.replace(old, out)
                moved = False
        raise
    finally:
        if moved and old is not None:  # the new folder stands
            with signals_deferred():
                shutil.rmtree(old, ignore_errors=True)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


WORK_KINDS = ("gpt2", "bit", "keras")


def sweep_work_dirs() -> list[Path]:
    """Removes the $TMPDIR work folders of liteship runs that were killed."""
    root = Path(tempfile.gettempdir())
    return [p for kind in WORK_KINDS for p in sweep_stale(root, f"liteship-{kind}-")]


def work_dir(kind: str) -> Path:
    """A fresh ``liteship-<kind>-<pid>-...`` folder in $TMPDIR; stale ones of dead runs are swept first."""
    assert kind in WORK_KINDS, kind
    sweep_work_dirs()
    return Path(tempfile.mkdtemp(prefix=f"liteship-{kind}-{os.getpid()}-", dir=tempfile.gettempdir()))
