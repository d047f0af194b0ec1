"""The device interface every target kind implements, and the one registry that maps a user's spec to a kind.

A *target* is somewhere a bundle can be pushed and benchmarked: the host itself (``local``), a Linux board over the
system OpenSSH client (``ssh:pi@board``), an Android phone over adb-shell (``adb:SERIAL``). Everything above this
module (push, probe, bench) talks to a target only through ``run``/``shell``/``put``/``get``, so a new kind gets
those features for free.

Kinds register with :func:`register_target` - the built-in ones below the same way a third party would. A factory
may be given as ``"module.path:qualname"`` so that its module (and e.g. adb-shell) is imported only when a spec of
that kind is opened.

Factory contract: ``factory(spec: str, **options) -> Target`` where ``spec`` is the string the user typed up to any
``?`` (``"adb:127.0.0.1:5037"``) and ``options`` are keyword arguments passed through :func:`open_target` (a kind
ignores or rejects options it does not know; e.g. ``ssh_options`` for ssh), plus the kind's own spec parameters.

Spec parameters: a spec may end in ``?NAME=VALUE&NAME=VALUE`` (values %-encoded where needed). ``python`` is
every kind's (the device's interpreter: ``ssh:board?python=/opt/venv/bin/python``, ``Target.python``); a kind
names its own at registration (``adb-server:SERIAL?server=HOST:PORT``) and receives them as options. An unknown,
repeated or empty one is an error naming it.
"""

from __future__ import annotations

import abc
import importlib
import shlex
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence, Union

from liteship.errors import DeviceError


@dataclass(frozen=True)
class CommandResult:
    """What a command on a target returned; output is decoded as UTF-8 (undecodable bytes replaced)."""

    returncode: int
    stdout: str
    stderr: str


CHUNK = 1 << 20  # bytes per read when a file copy reports its progress


def quote(arg: Any) -> str:
    """Quote one argument for a POSIX shell (sh, toybox sh, busybox ash); use for every value put in a script."""
    return shlex.quote(str(arg))


def join(argv: Sequence[Any]) -> str:
    """One POSIX shell command line from an argv list, every element quoted."""
    return " ".join(quote(a) for a in argv)


def last_line(text: str) -> str:
    """The last non-empty line of ``text`` (stripped), or "" - what an error message quotes from stderr."""
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""


def _short(command: str, limit: int = 120) -> str:
    command = " ".join(command.split())
    return command if len(command) <= limit else command[: limit - 3] + "..."


class Target(abc.ABC):
    """A device that can run commands, receive and send files.

    Subclasses set ``kind`` and implement ``run``, ``put`` and ``get``. ``name`` is the spec the user typed and
    appears in every error message.
    """

    kind: ClassVar[str]
    name: str
    python: str | None = None  # the device's Python interpreter from the spec (?python=...); None: the default

    def __init__(self, name: str):
        self.name = name

    # --- commands -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        check: bool = True,
    ) -> CommandResult:
        """Run ``argv`` on the target (every element quoted for the remote POSIX shell; nothing is expanded).

        ``check=True`` raises :class:`DeviceError` on a non-zero exit (see :meth:`check_result`). A timeout or a
        lost connection always raises :class:`DeviceError` naming the target.
        """

    def shell(self, script: str, *, timeout: float | None = None, check: bool = True) -> CommandResult:
        """Run a trusted POSIX shell script written by liteship (values in it already quoted with :func:`quote`)."""
        return self.run(["sh", "-c", script], timeout=timeout, check=check)

    # --- files ----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def put(self, local: Path, remote: str, *, timeout: float | None = None,
            progress: Callable[[int], None] | None = None) -> None:
        """Copy one local file to the exact remote path (its parent folder must exist; an existing file is
        replaced). Raises :class:`DeviceError` on any failure. ``progress(bytes_sent)`` is called as the file goes
        (a kind whose put lacks the keyword still works: push.py then reports whole files)."""

    @abc.abstractmethod
    def get(self, remote: str, local: Path, *, timeout: float | None = None) -> None:
        """Copy one remote file to the exact local path. Raises :class:`DeviceError` on any failure."""

    # --- places and lifetime --------------------------------------------------------------------------------
    def default_workdir(self) -> str:
        """Where liteship keeps bundles and runners on this target (an absolute path on the target)."""
        raise NotImplementedError(f"{type(self).__name__} has no default working folder")

    def close(self) -> None:
        """Release connections; safe to call twice."""

    def __enter__(self) -> "Target":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # --- helpers for implementations ------------------------------------------------------------------------
    def check_result(self, command: str | Sequence[str], result: CommandResult) -> CommandResult:
        """Raise the one-line DeviceError for a failed command: target, command, exit code, last stderr line."""
        if result.returncode != 0:
            raise self.command_error(command, result)
        return result

    def command_error(self, command: str | Sequence[str], result: CommandResult) -> DeviceError:
        text = command if isinstance(command, str) else join(command)
        detail = last_line(result.stderr) or last_line(result.stdout) or "no output"
        return DeviceError(f"{self.name}: `{_short(text)}` exited {result.returncode}: {detail}")


# --- the registry -------------------------------------------------------------------------------------------

class ShellTarget(Target):
    """A target reached through a remote POSIX shell (ssh, adb): ``run`` quotes argv into one command line and
    hands it to ``_execute``, the one method such a kind implements for commands."""

    @abc.abstractmethod
    def _execute(self, command: str, *, timeout: float | None, stdin: bytes | None) -> CommandResult:
        """Run one already-quoted command line on the remote shell."""

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        check: bool = True,
    ) -> CommandResult:
        command = join(argv)
        result = self._execute(command, timeout=timeout, stdin=stdin)
        return self.check_result(command, result) if check else result


Factory = Union[Callable[..., Target], str]


COMMON_PARAMS = ("python",)  # spec parameters every kind takes (see the module docstring)


@dataclass(frozen=True)
class TargetKind:
    kind: str
    prefixes: tuple[str, ...]
    factory: Factory
    params: tuple[str, ...] = ()  # the kind's own spec parameters, passed to the factory as options

    def matches(self, spec: str) -> bool:
        return any(spec == p or spec.startswith(p + ":") for p in self.prefixes)

    def resolve(self) -> Callable[..., Target]:
        if callable(self.factory):
            return self.factory
        module_name, _, qualname = self.factory.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj


_REGISTRY: dict[str, TargetKind] = {}


def register_target(kind: str, prefixes: Sequence[str], factory: Factory, params: Sequence[str] = ()) -> None:
    """Make specs starting with one of ``prefixes`` (``"p"`` or ``"p:..."``) open with ``factory``.

    ``factory`` is a callable ``(spec, **options) -> Target`` or ``"module:qualname"`` naming one, imported on first
    use; ``params`` are the spec parameters (``?NAME=VALUE``) it takes besides ``python``. Registering a kind again
    replaces it (a third party may override a built-in).
    """
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    _REGISTRY[kind] = TargetKind(kind, tuple(prefixes), factory, tuple(params))


def registered_kinds() -> dict[str, TargetKind]:
    return dict(_REGISTRY)


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"ssh:board?python=/opt/venv/bin/python"`` -> ``("ssh:board", {"python": "/opt/venv/bin/python"})``."""
    base, sep, query = spec.strip().partition("?")
    params: dict[str, str] = {}
    if not sep:
        return base, params
    for item in query.split("&"):
        key, eq, value = (urllib.parse.unquote(part) for part in item.partition("="))
        if not eq or not key or not value.strip():
            raise DeviceError(f"bad device {spec!r}: {item!r} is not NAME=VALUE")
        if key in params:
            raise DeviceError(f"bad device {spec!r}: {key} is given twice")
        if any(c in value for c in "\0\n\r"):
            raise DeviceError(f"bad device {spec!r}: {key} holds a control character")
        params[key] = value
    return base, params


def base_spec(spec: str) -> str:
    """The spec without its parameters: what budget tables and error messages name a device by."""
    return spec.strip().partition("?")[0]


def open_target(spec: str, **options: Any) -> Target:
    """Open the target a user named: ``local``; ``ssh:[user@]host[:port]`` or ``ssh:alias``; ``adb``
    (``$ANDROID_SERIAL``), ``adb:SERIAL``, ``adb:HOST:PORT``; ``adb-server[:SERIAL]`` - each optionally with
    ``?python=PATH`` and the kind's own parameters."""
    base, params = split_spec(spec)
    for entry in _REGISTRY.values():
        if entry.matches(base):
            known = COMMON_PARAMS + entry.params
            unknown = [key for key in params if key not in known]
            if unknown:
                raise DeviceError(f"bad device {spec.strip()!r}: unknown parameter {unknown[0]!r} "
                                  f"({entry.kind} devices take {', '.join(known)})")
            python = params.pop("python", None)
            if python is not None and python.startswith("-"):
                raise DeviceError(f"bad device {spec.strip()!r}: python={python} is not an interpreter path")
            target = entry.resolve()(base, **{**options, **params})
            if python is not None:
                target.python = python
            return target
    examples = "local, ssh:[user@]host[:port], ssh:ALIAS, adb, adb:SERIAL, adb:HOST:PORT, adb-server[:SERIAL]"
    raise DeviceError(f"unknown device {spec!r}: expected one of {examples}")


def device_python(target: Target, default: str | None = None) -> str:
    """The interpreter to run on ``target``: its spec's ``?python=``, else ``default`` (the --python option),
    else ``python3`` (this very interpreter for the local target)."""
    if target.python:
        return target.python
    if default:
        return default
    return sys.executable if target.kind == "local" else "python3"


# The built-in kinds, registered exactly as a third party would (lazily, so adb-shell is imported only for adb:).
register_target("local", ("local",), "liteship.device.local:LocalTarget.from_spec")
register_target("ssh", ("ssh",), "liteship.device.ssh:SSHTarget.from_spec")
register_target("android", ("adb",), "liteship.device.android:AndroidTarget.from_spec")
register_target("adb-server", ("adb-server",), "liteship.device.adb_server:AdbServerTarget.from_spec",
                params=("server",))
