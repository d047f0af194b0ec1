"""Android phones through a running adb server: the phone the SDK's ``adb`` already holds, here or on another host.

An adb server (``adb start-server``, port 5037) owns the USB phones plugged into its machine; while it runs, nothing
else can claim them. Rather than ``adb kill-server``, liteship can ask that server, the way the ``adb`` client
does, over its smart-socket protocol (AOSP adb's OVERVIEW.TXT, SERVICES.TXT, SYNC.TXT):

- every request is 4 hex digits of length and the request text; the server answers ``OKAY``, or ``FAIL`` with
  4 hex digits of length and a message;
- ``host:devices`` lists serials; ``host-serial:SERIAL:features`` says what the phone's adbd speaks (``shell_v2``);
- ``host:transport:SERIAL`` (``host:transport-any`` for the only phone) turns the connection into one to that
  phone; the next request on it is a device service: ``shell,v2,raw:COMMAND`` (or ``shell:COMMAND`` on adbd
  before Android 7) streams the command, ``sync:`` starts a file-sync session (``SEND``/``RECV``/``QUIT``).

Each command and each file transfer is one such connection, so a timed-out command is ended by closing it (the
server closes the stream and adbd hangs the command up). The phone trusts the *server's* key (its
``~/.android/adbkey``), not liteship's; ``--adb-key`` does not apply.

Specs: ``adb-server`` (the server's only phone), ``adb-server:SERIAL`` (any serial the server lists, including
``HOST:PORT`` of a phone it reached with ``adb connect``), plus ``?server=HOST:PORT`` for a server on another host
(``adb -a`` makes a server listen on every interface). Without it the server is where the ``adb`` client looks:
``$ADB_SERVER_SOCKET`` (``tcp:HOST:PORT``), else ``$ANDROID_ADB_SERVER_ADDRESS`` and
``$ANDROID_ADB_SERVER_PORT``, else 127.0.0.1:5037.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from liteship.errors import DeviceError
from liteship.runtime.files import atomic_path

from .android import DEFAULT_WORKDIR, AdbTimeouts, AndroidTarget, decode_shell_v2, write_failed
from .base import CommandResult

DEFAULT_PORT = 5037
SYNC_DATA_MAX = 64 * 1024  # the largest DATA chunk of a file-sync SEND (SYNC.TXT)
SYNC_HEADER = struct.Struct("<4sI")  # id, then a little-endian length (or mode/mtime)


@dataclass(frozen=True)
class ServerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})$")


def _parse_host_port(text: str, what: str) -> ServerAddress:
    match = _HOST_PORT.match(text.strip())
    port = int(match["port"]) if match else 0
    if not match or not 0 < port < 65536:
        raise DeviceError(f"{what}: expected HOST:PORT (e.g. 127.0.0.1:5037), not {text!r}")
    return ServerAddress(match["v6"] or match["host"], port)


def server_address(given: str | None = None, environ: dict[str, str] | None = None) -> ServerAddress:
    """The adb server to ask: ``given`` (HOST:PORT), else where the ``adb`` client itself would look."""
    environ = os.environ if environ is None else environ
    if given:
        return _parse_host_port(given, "server")
    socket_spec = environ.get("ADB_SERVER_SOCKET", "").strip()
    if socket_spec:
        rest = socket_spec[4:] if socket_spec.startswith("tcp:") else None
        if rest is None:
            raise DeviceError(f"ADB_SERVER_SOCKET={socket_spec}: liteship reaches adb servers over tcp:HOST:PORT only")
        return _parse_host_port(rest if ":" in rest else f"127.0.0.1:{rest}", f"ADB_SERVER_SOCKET={socket_spec}")
    port_text = environ.get("ANDROID_ADB_SERVER_PORT", "").strip() or str(DEFAULT_PORT)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise DeviceError(f"ANDROID_ADB_SERVER_PORT={port_text}: not a port number")
    return ServerAddress(environ.get("ANDROID_ADB_SERVER_ADDRESS", "").strip() or "127.0.0.1", int(port_text))


class ServerRefused(Exception):
    """The server (or the phone behind it) answered FAIL; ``args[0]`` is its message."""


class SmartSocket:
    """One connection to an adb server. Every read is bounded by ``deadline`` (time.monotonic())."""

    def __init__(self, address: ServerAddress, connect_timeout: float):
        self.address = address
        self.deadline = time.monotonic() + connect_timeout
        self.sock = socket.create_connection((address.host, address.port), timeout=connect_timeout)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "SmartSocket":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        return left

    def recv_some(self, limit: int = 1 << 16) -> bytes:
        self.sock.settimeout(self._remaining())
        return self.sock.recv(limit)

    def recv_exact(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.recv_some(size - len(data))
            if not chunk:
                raise ConnectionResetError(f"the adb server at {self.address} closed the connection")
            data += chunk
        return bytes(data)

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self._remaining())
        self.sock.sendall(data)

    def request(self, service: str) -> None:
        """Send one smart-socket request and wait for OKAY; FAIL raises ServerRefused with the server's message."""
        body = service.encode()
        self.send(b"%04x" % len(body) + body)
        status = self.recv_exact(4)
        if status == b"OKAY":
            return
        if status == b"FAIL":
            raise ServerRefused(self.read_string())
        raise ConnectionResetError(f"the adb server at {self.address} answered {status!r}, not OKAY/FAIL")

    def read_string(self) -> str:
        """4 hex digits of length, then that many bytes of text."""
        return self.recv_exact(int(self.recv_exact(4), 16)).decode("utf-8", "replace")

    def stream(self) -> Iterator[bytes]:
        """Everything the other end sends until it closes the connection."""
        while True:
            chunk = self.recv_some()
            if not chunk:
                return
            yield chunk


def query(address: ServerAddress, service: str, timeout: float = 5.0) -> str:
    """One host request that answers with a string (``host:devices``, ``host-serial:X:features``)."""
    with SmartSocket(address, timeout) as conn:
        conn.request(service)
        return conn.read_string()


def list_devices(address: ServerAddress, timeout: float = 5.0) -> dict[str, str]:
    """Serial -> state ("device", "offline", "unauthorized", ...) as the server lists them."""
    body = query(address, "host:devices", timeout)
    return dict(line.split("\t", 1) for line in body.splitlines() if "\t" in line)


def parse_spec(spec: str) -> str | None:
    """``adb-server`` -> None (the only phone), ``adb-server:SERIAL`` -> SERIAL (taken whole, colons and all)."""
    if spec == "adb-server":
        return None
    serial = spec[len("adb-server:"):].strip() if spec.startswith("adb-server:") else ""
    if not serial:
        raise DeviceError(f"bad adb server device {spec!r}: write adb-server or adb-server:SERIAL "
                          "(with ?server=HOST:PORT for a server on another host)")
    return serial


class AdbServerTarget(AndroidTarget):
    """A phone reached through an adb server. Commands, pushes and pulls are what :class:`AndroidTarget` does
    (shell v2 with a v1 fallback, scripts and stdin as files, atomic pulls); only the transport differs."""

    def __init__(self, name: str, serial: str | None, server: ServerAddress, *,
                 timeouts: AdbTimeouts = AdbTimeouts(), workdir: str | None = None):
        super().__init__(name, None, timeouts=timeouts, workdir=workdir)
        self.serial = serial
        self.server = server

    @classmethod
    def from_spec(cls, spec: str, *, server: str | None = None, transport_timeout_s: float | None = None,
                  read_timeout_s: float | None = None, command_timeout_s: float | None = None,
                  workdir: str | None = None, **options: Any) -> "AdbServerTarget":
        # adb_key and auth_timeout_s arrive in options and do not apply: the server authenticates to the phone.
        given = {"transport_s": transport_timeout_s, "read_s": read_timeout_s, "command_s": command_timeout_s}
        timeouts = replace(AdbTimeouts(), **{k: float(v) for k, v in given.items() if v is not None})
        return cls(spec, parse_spec(spec), server_address(server), timeouts=timeouts, workdir=workdir)

    def default_workdir(self) -> str:
        return self._workdir or DEFAULT_WORKDIR

    # --- the server ---------------------------------------------------------------------------------------
    def _where(self) -> str:
        phone = self.serial or "its only device"
        return f"{phone} on the adb server at {self.server}"

    def _transport(self, limit: float) -> SmartSocket:
        """A connection switched to this phone (``host:transport:SERIAL``); reads bounded by ``limit`` seconds."""
        try:
            conn = SmartSocket(self.server, self.timeouts.transport_s)
        except OSError as exc:
            raise DeviceError(
                f"{self.name}: no adb server answers at {self.server} ({exc.strerror or exc}): start one with "
                f"`adb start-server` on that machine (`adb -a nodaemon server` to serve other hosts)"
            ) from None
        try:
            conn.request(f"host:transport:{self.serial}" if self.serial else "host:transport-any")
        except ServerRefused as exc:
            conn.close()
            raise self._refusal(str(exc)) from None
        except BaseException:
            conn.close()
            raise
        conn.deadline = time.monotonic() + limit
        return conn

    def _refusal(self, message: str) -> DeviceError:
        first = message.strip().splitlines()[0] if message.strip() else "refused"
        if "unauthorized" in message:
            hint = ("; unlock the phone and tap Allow on its \"Allow USB debugging?\" prompt for the server's key "
                    "(~/.android/adbkey on the server's machine)")
        elif "not found" in message or "no devices" in message:
            try:
                listed = ", ".join(f"{s} ({state})" for s, state in list_devices(self.server).items()) or "none"
            except (OSError, ServerRefused, ValueError):
                listed = "unknown"
            hint = f"; the server lists: {listed}"
        elif "more than one" in message:
            hint = "; name one: adb-server:SERIAL (`adb devices` lists them)"
        else:
            hint = ""
        return DeviceError(f"{self.name}: the adb server at {self.server} refused {self.serial or 'the phone'}: "
                           f"{first}{hint}")

    def _call(self, what: str, timeout: float, action: Callable[[Any], Any]):
        """Run ``action(self)``; the server's and the socket's failures become one-line DeviceErrors."""
        try:
            return action(self)
        except DeviceError:
            raise
        except ServerRefused as exc:
            raise DeviceError(f"{self.name}: {what} refused by {self._where()}: {exc}") from None
        except socket.timeout:
            raise DeviceError(f"{self.name}: {what} timed out after {timeout:g}s") from None
        except (OSError, ValueError) as exc:
            raise DeviceError(f"{self.name}: connection to {self._where()} lost during {what}: {exc}") from None

    def close(self) -> None:
        """Nothing stays open: every command and transfer had its own connection."""

    # --- commands -----------------------------------------------------------------------------------------
    def _has_shell_v2(self) -> bool:
        if self._shell_v2 is None:
            service = f"host-serial:{self.serial}:features" if self.serial else "host:features"
            try:
                features = query(self.server, service, self.timeouts.transport_s)
            except ServerRefused as exc:
                raise self._refusal(str(exc)) from None
            except OSError:
                features = ""  # the connection's own error comes with the command
            self._shell_v2 = "shell_v2" in features.split(",")
        return self._shell_v2

    def _run_v2(self, dev, command: str, limit: float) -> CommandResult | None:
        if not self._has_shell_v2():
            return None
        with self._transport(limit) as conn:
            conn.request("shell,v2,raw:" + command)
            return decode_shell_v2(conn.stream(), self.name, command)

    def _shell_v1(self, command: str, what: str, limit: float) -> bytes:
        def run(_self) -> bytes:
            with self._transport(limit) as conn:
                conn.request("shell:" + command)
                return b"".join(conn.stream())

        return self._call(what, limit, run)

    # --- files: the file-sync service ---------------------------------------------------------------------
    def _sync_push(self, source, remote: str, mode: int, mtime: int, timeout: float | None,
                   progress: Callable[[int], None] | None = None) -> None:
        limit = float(timeout) if timeout is not None else self.timeouts.command_s

        def push(_self) -> None:
            handle = open(source, "rb") if isinstance(source, str) else source
            with handle, self._transport(limit) as conn:
                conn.request("sync:")
                target = f"{remote},{mode}".encode()  # st_mode in decimal, file type bits included
                conn.send(SYNC_HEADER.pack(b"SEND", len(target)) + target)
                sent = 0
                while True:
                    block = handle.read(SYNC_DATA_MAX)
                    if not block:
                        break
                    conn.send(SYNC_HEADER.pack(b"DATA", len(block)) + block)
                    sent += len(block)
                    if progress is not None:  # bytes sent so far, as AndroidTarget reports them
                        progress(sent)
                conn.send(SYNC_HEADER.pack(b"DONE", mtime & 0xFFFFFFFF))
                status, length = SYNC_HEADER.unpack(conn.recv_exact(SYNC_HEADER.size))
                if status == b"FAIL":
                    raise write_failed(self.name, remote, conn.recv_exact(length).decode("utf-8", "replace"))
                if status != b"OKAY":
                    raise ConnectionResetError(f"file-sync answered {status!r} to a push")
                conn.send(SYNC_HEADER.pack(b"QUIT", 0))

        self._call(f"push to {remote}", limit, push)

    def get(self, remote: str, local: Path, *, timeout: float | None = None) -> None:
        limit = float(timeout) if timeout is not None else self.timeouts.command_s

        def pull(tmp: Path) -> None:
            with open(tmp, "wb") as out, self._transport(limit) as conn:
                conn.request("sync:")
                path = remote.encode()
                conn.send(SYNC_HEADER.pack(b"RECV", len(path)) + path)
                while True:
                    kind, length = SYNC_HEADER.unpack(conn.recv_exact(SYNC_HEADER.size))
                    if kind == b"DATA":
                        out.write(conn.recv_exact(length))
                    elif kind == b"DONE":
                        break
                    elif kind == b"FAIL":
                        reason = conn.recv_exact(length).decode("utf-8", "replace")
                        raise DeviceError(f"{self.name}: cannot read {remote}: {reason}")
                    else:
                        raise ConnectionResetError(f"file-sync answered {kind!r} to a pull")
                conn.send(SYNC_HEADER.pack(b"QUIT", 0))

        with atomic_path(local) as tmp:
            self._call(f"pull of {remote}", limit, lambda _self: pull(tmp))
