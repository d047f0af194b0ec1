"""Errors a user can cause, and the one place that turns any exception into the CLI's one line and exit code.

User errors are LiteshipError subclasses. Some errors from the outside world arrive as other types (a full disk as
OSError, a bad .npy as numpy's EOFError, a full $TMPDIR as TensorFlow's ResourceExhaustedError); ``describe`` maps
those classes too, so no command needs its own copy of the mapping. Anything else is a bug: it is reported as an
internal error (still one line; ``LITESHIP_DEBUG=1`` shows the whole chain for every error).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class LiteshipError(Exception):
    """A problem with the user's input, files or devices, explained in one line."""

    exit_code = EXIT_ERROR


class ConvertError(LiteshipError):
    """A checkpoint, calibration set or option that cannot become a bundle."""


class BundleError(LiteshipError):
    """A bundle or .tflite that is missing, truncated, tampered with or of an unknown schema."""


class RuntimeLiteshipError(LiteshipError):
    """Bad input to a model at run time: a prompt longer than the context, an image that is not an image."""


class DeviceError(LiteshipError):
    """A device that cannot be reached, is full, rejects the key, or fails a command."""


# TensorFlow raises these for the machine's state or the user's files (a full $TMPDIR in SaveV2, a checkpoint
# that is not there or unreadable), not for liteship's own mistakes. Matched by name: this module never imports TF.
TENSORFLOW_USER_ERRORS = {"ResourceExhaustedError", "NotFoundError", "PermissionDeniedError", "DataLossError"}

OS_HINTS = {
    errno.ENOSPC: "the disk is full",
    getattr(errno, "EDQUOT", -1): "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
}


# ---- Ctrl-C that nobody can swallow --------------------------------------------------------------------------
# Python turns SIGINT into KeyboardInterrupt wherever the main thread happens to be. Inside TensorFlow's converter
# that can be a finally/except or a callback whose exceptions are ignored, and the run went on to replace the old
# bundle with exit 0. The CLI's handler also records the interrupt, so the commit points (replacing a bundle or an
# output file) and the exit code see it even when the KeyboardInterrupt itself was lost.

_interrupted: list = []
_DEFERRED = {signal.SIGINT, signal.SIGTERM}
_deferring = 0  # > 0 inside signals_deferred(): the handler records, the block's end raises


def _on_sigint(signum, frame):
    where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"
    _interrupted.append(where)
    if not _deferring:
        raise KeyboardInterrupt


def install_interrupt_handler() -> None:
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when the shell runs us with it ignored
        signal.signal(signal.SIGINT, _on_sigint)
    sys.unraisablehook = _unraisable


def _unraisable(info) -> None:
    """Exceptions Python cannot raise (in a __del__ or a callback) are ignored anyway; a Ctrl-C that lands in
    TensorFlow's AtomicFunction.__del__ is one of them: it is recorded (see _on_sigint), so the run still ends
    with 130, and it prints no "Exception ignored" traceback. Others show with LITESHIP_DEBUG=1."""
    if isinstance(info.exc_value, KeyboardInterrupt):
        return
    if debug_enabled():
        sys.__unraisablehook__(info)


def was_interrupted() -> bool:
    return bool(_interrupted)


@contextlib.contextmanager
def signals_deferred():
    """SIGINT and SIGTERM wait until the block is done and are raised right after it: the OS holds them back, and
    one that arrived just before the block (Python runs a handler at its next chance, which can be inside it) is
    recorded there, not raised. interrupt_pending() tells the block whether one is waiting."""
    global _deferring
    seen = len(_interrupted)
    blockable = hasattr(signal, "pthread_sigmask")
    if blockable:
        signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if blockable:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _DEFERRED)  # a held SIGINT is delivered here and raises
    if len(_interrupted) > seen:
        raise KeyboardInterrupt


def interrupt_pending() -> bool:
    """Whether a Ctrl-C has come in this run, including one signals_deferred() is still holding back."""
    held = signal.sigpending() if hasattr(signal, "sigpending") else set()
    return bool(_interrupted) or bool(set(held) & _DEFERRED)


def interrupt_locations() -> list[str]:
    return list(_interrupted)


def check_interrupted() -> None:
    """Raises KeyboardInterrupt if Ctrl-C was pressed at any time in this run, even if something swallowed it.

    TensorFlow's converter leaves the main thread with every signal blocked (seen in /proc/PID/status SigBlk
    during `convert savedmodel`), and its own threads block them too, so a Ctrl-C stayed pending and was never
    delivered: the run replaced the old bundle and exited 0. Unblocking delivers a pending SIGINT here."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _DEFERRED)
    signal.getsignal(signal.SIGINT)  # a bytecode boundary: Python runs the handler of a just-delivered signal
    if _interrupted:
        raise KeyboardInterrupt


def debug_enabled() -> bool:
    return os.environ.get("LITESHIP_DEBUG", "") not in ("", "0")


def os_error_message(exc: OSError) -> str:
    """``<file>: <reason>`` for an OSError, naming both files of a rename or copy."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = OS_HINTS.get(exc.errno)
    if hint and hint not in reason.lower():
        reason = f"{reason} ({hint})"
    if exc.filename is not None and exc.filename2 is not None:
        return f"{os.fsdecode(exc.filename)} -> {os.fsdecode(exc.filename2)}: {reason}"
    if exc.filename is not None:
        return f"{os.fsdecode(exc.filename)}: {reason}"
    return str(exc) or reason


def _cause_chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def describe(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line message without the ``error:`` prefix) for any exception reaching the CLI."""
    import click

    chain = list(_cause_chain(exc))
    # An interrupt anywhere in the chain wins: click turns KeyboardInterrupt into Abort, and a converter may wrap
    # it in its own error. Ctrl-C always means 130.
    if any(isinstance(e, KeyboardInterrupt) for e in chain):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, click.exceptions.Abort):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, EOFError):  # click takes any EOFError for Ctrl-D at a prompt; liteship has no prompts
            return describe(cause)
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, LiteshipError):
        return exc.exit_code, _one_line(str(exc))
    if isinstance(exc, click.exceptions.UsageError):
        return EXIT_USAGE, _one_line(exc.format_message())
    if isinstance(exc, click.exceptions.ClickException):
        return exc.exit_code or EXIT_ERROR, _one_line(exc.format_message())
    if isinstance(exc, OSError):
        return EXIT_ERROR, _one_line(os_error_message(exc))
    if isinstance(exc, MemoryError):
        return EXIT_ERROR, "out of memory"
    if isinstance(exc, UnicodeError):
        return EXIT_ERROR, _one_line(f"text is not valid {exc.encoding if hasattr(exc, 'encoding') else 'Unicode'}"
                                     f" ({exc.reason if hasattr(exc, 'reason') else exc})")
    if isinstance(exc, EOFError):
        return EXIT_ERROR, _one_line(f"a file ended early ({exc or 'unexpected end of file'})")
    if type(exc).__name__ in TENSORFLOW_USER_ERRORS and type(exc).__module__.startswith("tensorflow"):
        import re

        message = getattr(exc, "message", None) or str(exc)
        message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)  # TF's graph-node prefix
        message = re.sub(r"\s*\[Op:\w+\]\s*$", "", message)
        return EXIT_ERROR, _one_line(f"TensorFlow: {message}")
    return EXIT_ERROR, _one_line(f"internal error: {type(exc).__name__}: {exc} (a liteship bug; "
                                 "LITESHIP_DEBUG=1 shows the traceback)")


def _one_line(message: str) -> str:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return "; ".join(lines) if len(lines) <= 3 else "; ".join(lines[:3]) + " ..."
