"""A loopback ADB device for tests: the real ADB wire protocol over a real TCP socket on 127.0.0.1.

There is no phone and no adbd on the test machine, so this stands in for one. It is written from AOSP's protocol
description (system/core/adb/protocol.txt, SYNC.TXT, file_sync_service.cpp) and checked against what adb-shell
0.4.4 sends, which connects to it unchanged:

* every message is a 24-byte header of six little-endian uint32 - command, arg0, arg1, data length, data checksum
  (the byte sum, as version 0x01000000 peers expect), magic (command ^ 0xffffffff) - followed by the data;
* CNXN -> AUTH TOKEN (20 random bytes) -> AUTH SIGNATURE, checked against the authorized keys (Android's
  ``adb_keys`` format: base64 of the RSAPublicKey struct, then `` user@host``) with RSA PKCS#1 v1.5 over the token
  taken as a SHA-1 digest; an unknown key gets a fresh TOKEN, then the client sends AUTH RSAPUBLICKEY and the
  "Allow USB debugging?" prompt either accepts it (CNXN) or never answers, as a phone whose user taps Deny;
* OPEN / OKAY / WRTE / CLSE streams with one-WRTE-in-flight flow control;
* ``shell:CMD`` runs CMD for real with /bin/sh (stdout and stderr merged, no exit status: shell protocol v1);
* ``sync:`` with STAT, LIST (DENT...DONE), RECV (DATA...DONE or FAIL), SEND (path,mode; DATA...; DONE mtime ->
  OKAY or FAIL, a failed file is unlinked as adbd does) and QUIT.

The phone's storage is a sandbox folder. The only phone paths that exist are the mapped prefixes (by default
``/data/local/tmp`` -> ``<sandbox>/data/local/tmp``): the literal prefix is rewritten in shell command lines and sync
paths on the way in, and the sandbox path is rewritten back to the phone path in shell output. Files a command
writes keep whatever path text the command wrote. Shell commands run with the sandbox as their working folder and
the host's tools standing in for toybox.

Faults (attributes of :class:`Faults`, changeable while the server runs): drop the connection after N bytes of a
SEND, corrupt one byte of pushed files, delay every reply, deny new keys, a storage quota (SEND beyond it fails with
"No space left on device").
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# --- the wire format ----------------------------------------------------------------------------------------

HEADER = struct.Struct("<6I")
A_VERSION = 0x01000001  # what a current adbd speaks; the reply carries min(client's, ours)
MAX_PAYLOAD = 1024 * 1024  # adbd's MAX_PAYLOAD since Android 9; the reply carries min(client's, ours)

AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3

SYNC_DATA_MAX = 64 * 1024  # SYNC.TXT: a DATA packet carries at most 64 KiB
SYNC_REQUEST = struct.Struct("<4sI")  # id, length (or mtime for DONE)
SYNC_STAT = struct.Struct("<4sIII")  # id, mode, size, mtime
SYNC_DENT = struct.Struct("<4sIIII")  # id, mode, size, mtime, name length


def _wire(name: bytes) -> int:
    return struct.unpack("<I", name)[0]


COMMANDS = {_wire(c): c for c in (b"CNXN", b"AUTH", b"OPEN", b"OKAY", b"WRTE", b"CLSE", b"SYNC")}

# Android's RSAPublicKey struct (libcrypto_utils/android_pubkey.c): 2048-bit modulus, little-endian words.
ANDROID_PUBKEY = struct.Struct("<II256s256sI")


def pack_message(command: bytes, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    cmd = _wire(command)
    return HEADER.pack(cmd, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, cmd ^ 0xFFFFFFFF) + data


def parse_android_pubkey(text: bytes | str):
    """An ``adb_keys`` line (or the AUTH RSAPUBLICKEY payload) -> a cryptography RSA public key."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    if isinstance(text, bytes):
        text = text.rstrip(b"\0").decode("ascii", "replace")
    blob = base64.b64decode(text.split()[0])
    words, _n0inv, modulus, _rr, exponent = ANDROID_PUBKEY.unpack(blob)
    if words != 64:
        raise ValueError(f"not a 2048-bit adb key ({words} words)")
    return rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "little")).public_key()


def signature_matches(public_key, token: bytes, signature: bytes) -> bool:
    """adbd's check: RSA PKCS#1 v1.5 where the 20-byte token stands in for a SHA-1 digest (no hashing)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    try:
        public_key.verify(signature, token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))
        return True
    except (InvalidSignature, ValueError):
        return False


# --- configuration ------------------------------------------------------------------------------------------


@dataclass
class Faults:
    """Things a real phone or cable does that tests need on demand. Change them while the server runs."""

    drop_after_send_bytes: int | None = None  # close the TCP connection once a SEND has received this many bytes
    corrupt_sends: int = 0  # flip one byte in each of the next N non-empty files a SEND writes
    reply_delay_s: float = 0.0  # sleep before every message sent after authentication (a slow device)
    quota_bytes: int | None = None  # storage size: a SEND that would make the sandbox larger fails (disk full)
    deny_new_keys: bool = False  # the user taps Deny on "Allow USB debugging?" (the prompt never answers)


@dataclass
class Stats:
    connections: int = 0
    prompts: list[str] = field(default_factory=list)  # public keys the phone asked the user about
    shell_commands: list[str] = field(default_factory=list)  # as received, before rewriting
    sends: list[str] = field(default_factory=list)  # phone paths written by SEND (completed or not)
    drops: int = 0


class ProtocolError(Exception):
    pass


class _Closed(Exception):
    """The connection is gone (client closed it, or a fault dropped it)."""


# --- the server ---------------------------------------------------------------------------------------------


class FakeAdbd:
    """``with FakeAdbd(tmp_path / "phone") as adbd: spec = f"adb:127.0.0.1:{adbd.port}"``."""

    def __init__(
        self,
        sandbox: Path,
        *,
        authorized_keys: tuple[str, ...] = (),
        require_auth: bool = True,
        path_map: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        product: str = "liteship_loopback",
        model: str = "Loopback ADB",
        device: str = "loopback",
        props: dict[str, str] | None = None,
    ):
        self.sandbox = Path(sandbox).resolve()
        if not re.fullmatch(r"[A-Za-z0-9_./+-]+", str(self.sandbox)):
            # The prefix rewrite puts this path into shell command lines unquoted.
            raise ValueError(f"sandbox path must be shell-safe: {self.sandbox}")
        self.sandbox.mkdir(parents=True, exist_ok=True)
        phone_paths = path_map or {"/data/local/tmp": "data/local/tmp"}
        # Longest prefix first so "/data/local/tmp/x" is not caught by a shorter mapping.
        by_length = sorted(phone_paths.items(), key=lambda kv: -len(kv[0]))
        self.path_map = {phone: (self.sandbox / rel).resolve() for phone, rel in by_length}
        for host in self.path_map.values():
            host.mkdir(parents=True, exist_ok=True)
        self.authorized_keys = {k.split()[0] for k in authorized_keys}
        self.require_auth = require_auth
        self.env = dict(env or {})
        # A phone has getprop; this one answers from ``props`` (a stand-in tool in <sandbox>/system/bin, on PATH).
        self.props = {"ro.product.name": product, "ro.product.model": model, "ro.product.device": device}
        self.props.update(props or {})
        self.bin_dir = self.sandbox / "system" / "bin"
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        cases = "".join(f"  {shlex.quote(k)}) printf '%s\\n' {shlex.quote(v)} ;;\n" for k, v in self.props.items())
        getprop = self.bin_dir / "getprop"
        getprop.write_text(f'#!/bin/sh\ncase "$1" in\n{cases}  *) echo ;;\nesac\n')
        getprop.chmod(0o755)
        self.banner = (
            f"device::ro.product.name={product};ro.product.model={model};ro.product.device={device};features=cmd\0"
        ).encode()
        self.faults = Faults()
        self.stats = Stats()
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._connections: list[_Connection] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.port = 0

    # lifetime
    def start(self) -> "FakeAdbd":
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))  # a free port
        server.listen(8)
        server.settimeout(0.1)  # close() does not wake a blocked accept(); the loop polls the stop flag instead
        self._server = server
        self.port = server.getsockname()[1]
        thread = threading.Thread(target=self._accept_loop, name="fake-adbd-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            try:
                self._server.close()
            except OSError:
                pass
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> "FakeAdbd":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def spec(self) -> str:
        return f"adb:127.0.0.1:{self.port}"

    def authorize_key_file(self, public_key_path: Path) -> None:
        """Add a key as if the user had ticked "Always allow from this computer" earlier."""
        self.authorized_keys.add(Path(public_key_path).read_text().split()[0])

    # paths
    def host_path(self, phone_path: str) -> Path | None:
        """The sandbox file standing for ``phone_path``, or None outside the mapped prefixes."""
        for phone, host in self.path_map.items():
            if phone_path == phone or phone_path.startswith(phone + "/"):
                return Path(str(host) + phone_path[len(phone) :])
        return None

    def rewrite_command(self, command: str) -> str:
        for phone, host in self.path_map.items():
            command = re.sub(re.escape(phone) + r"(?=/|\b|$)", str(host), command)
        return command

    def rewrite_output(self, data: bytes) -> bytes:
        for phone, host in self.path_map.items():
            data = data.replace(str(host).encode(), phone.encode())
        return data

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.sandbox.rglob("*") if p.is_file() and not p.is_symlink())

    # accepting
    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._stopping.is_set():
            try:
                sock, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(None)
            conn = _Connection(self, sock)
            with self._lock:
                self._connections.append(conn)
                self.stats.connections += 1
            thread = threading.Thread(target=conn.serve, name="fake-adbd-conn", daemon=True)
            thread.start()
            self._threads.append(thread)


class _Connection:
    """One client transport: authentication, then streams multiplexed by local id."""

    def __init__(self, adbd: FakeAdbd, sock: socket.socket):
        self.adbd = adbd
        self.sock = sock
        self.authed = not adbd.require_auth
        self.max_payload = MAX_PAYLOAD
        self.version = A_VERSION
        self.token = b""
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.send_lock = threading.Lock()
        self.closed = threading.Event()

    # raw I/O
    def _recv_exact(self, n: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < n:
            try:
                chunk = self.sock.recv(n - len(chunks))
            except OSError:
                chunk = b""
            if not chunk:
                raise _Closed()
            chunks += chunk
        return bytes(chunks)

    def read_message(self) -> tuple[bytes, int, int, bytes]:
        cmd, arg0, arg1, length, check, magic = HEADER.unpack(self._recv_exact(HEADER.size))
        if cmd not in COMMANDS or magic != cmd ^ 0xFFFFFFFF:
            raise ProtocolError(f"bad command/magic {cmd:#x}/{magic:#x}")
        if length > max(self.max_payload, MAX_PAYLOAD):
            raise ProtocolError(f"message of {length} bytes exceeds max payload {self.max_payload}")
        data = self._recv_exact(length) if length else b""
        if (sum(data) & 0xFFFFFFFF) != check:
            raise ProtocolError("data checksum mismatch")
        return COMMANDS[cmd], arg0, arg1, data

    def send(self, command: bytes, arg0: int, arg1: int, data: bytes = b"") -> None:
        if self.authed and self.adbd.faults.reply_delay_s:
            time.sleep(self.adbd.faults.reply_delay_s)
        with self.send_lock:
            if self.closed.is_set():
                raise _Closed()
            try:
                self.sock.sendall(pack_message(command, arg0, arg1, data))
            except OSError as exc:
                raise _Closed() from exc

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for stream in list(self.streams.values()):
            stream.abort()

    def drop(self) -> None:
        """A fault: the cable is pulled."""
        self.adbd.stats.drops += 1
        self.close()

    # the reader: authentication and dispatch
    def serve(self) -> None:
        try:
            while not self.closed.is_set():
                command, arg0, arg1, data = self.read_message()
                if command == b"CNXN":
                    self._on_connect(arg0, arg1, data)
                elif command == b"AUTH":
                    self._on_auth(arg0, data)
                elif not self.authed:
                    continue  # adbd ignores everything else until the transport is online
                elif command == b"OPEN":
                    self._on_open(arg0, data)
                elif command in (b"OKAY", b"WRTE", b"CLSE"):
                    # arg0 is the client's id, arg1 ours.
                    stream = self.streams.get(arg1)
                    if stream is not None and stream.remote_id in (arg0, 0):
                        stream.inbox_put(command, data)
                    elif command == b"WRTE":
                        self.send(b"CLSE", 0, arg0)  # data for a stream that no longer exists
        except (_Closed, ProtocolError):
            pass
        finally:
            self.close()

    def _on_connect(self, version: int, max_payload: int, _banner: bytes) -> None:
        self.version = min(version, A_VERSION)
        self.max_payload = min(max_payload, MAX_PAYLOAD)
        if self.authed:
            self.send(b"CNXN", self.version, self.max_payload, self.adbd.banner)
            return
        self._send_token()

    def _send_token(self) -> None:
        self.token = os.urandom(20)
        self.send(b"AUTH", AUTH_TOKEN, 0, self.token)

    def _on_auth(self, kind: int, data: bytes) -> None:
        if self.authed:
            return
        if kind == AUTH_SIGNATURE:
            for key_text in list(self.adbd.authorized_keys):
                try:
                    key = parse_android_pubkey(key_text)
                except ValueError:
                    continue
                if signature_matches(key, self.token, data):
                    self._online()
                    return
            self._send_token()  # adbd offers a new token for the next key
        elif kind == AUTH_RSAPUBLICKEY:
            key_text = data.rstrip(b"\0").decode("ascii", "replace")
            self.adbd.stats.prompts.append(key_text)
            try:
                parse_android_pubkey(key_text)
            except (ValueError, struct.error):
                return
            if self.adbd.faults.deny_new_keys:
                return  # the prompt is dismissed; adbd never answers this connection
            self.adbd.authorized_keys.add(key_text.split()[0])
            self._online()

    def _online(self) -> None:
        self.authed = True
        self.send(b"CNXN", self.version, self.max_payload, self.adbd.banner)

    def _on_open(self, remote_id: int, data: bytes) -> None:
        destination = data.rstrip(b"\0").decode("utf-8", "replace")
        local_id = self.next_id
        self.next_id += 1
        if destination.startswith("shell:"):
            handler = _ShellStream
        elif destination == "sync:":
            handler = _SyncStream
        else:
            self.send(b"CLSE", 0, remote_id)  # unknown service: adbd refuses the OPEN
            return
        stream = handler(self, local_id, remote_id, destination)
        self.streams[local_id] = stream
        threading.Thread(target=stream.run, name=f"fake-adbd-{destination[:5]}", daemon=True).start()


class _Stream:
    """One OPENed stream. The handler thread talks through ``write`` (waits for the client's OKAY) and ``read``."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int, destination: str):
        self.conn = conn
        self.adbd = conn.adbd
        self.local_id = local_id
        self.remote_id = remote_id
        self.destination = destination
        self._cond = threading.Condition()
        self._okays = 0
        self._data: list[bytes] = []
        self.client_closed = False
        self.closed = False

    def inbox_put(self, command: bytes, data: bytes) -> None:
        if command == b"WRTE":
            # Acknowledge before the handler can see the data: its answer must not overtake this OKAY.
            self.conn.send(b"OKAY", self.local_id, self.remote_id)
        with self._cond:
            if command == b"OKAY":
                self._okays += 1
            elif command == b"WRTE":
                self._data.append(data)
            else:
                self.client_closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self.client_closed = True
            self._cond.notify_all()

    def _wait(self, predicate) -> None:
        with self._cond:
            while not predicate():
                if self.client_closed or self.conn.closed.is_set():
                    raise _Closed()
                self._cond.wait(0.5)

    def write(self, data: bytes) -> None:
        for start in range(0, len(data), self.conn.max_payload):
            with self._cond:
                self._okays = 0
            self.conn.send(b"WRTE", self.local_id, self.remote_id, data[start : start + self.conn.max_payload])
            self._wait(lambda: self._okays > 0)

    def read(self) -> bytes:
        self._wait(lambda: bool(self._data))
        with self._cond:
            return self._data.pop(0)

    def finish(self) -> None:
        """Close from our side (the client answers CLSE) unless the client closed first."""
        if self.closed:
            return
        self.closed = True
        self.conn.streams.pop(self.local_id, None)
        try:
            self.conn.send(b"CLSE", self.local_id, self.remote_id)
        except _Closed:
            pass

    def run(self) -> None:
        try:
            self.conn.send(b"OKAY", self.local_id, self.remote_id)
            self.serve()
        except _Closed:
            pass
        finally:
            self.finish()

    def serve(self) -> None:
        raise NotImplementedError


class _ShellStream(_Stream):
    """``shell:CMD`` as adbd runs it without a pty (protocol v1): one merged output stream, no exit status."""

    proc: subprocess.Popen | None = None

    def abort(self) -> None:
        # The client closed the stream or the connection dropped: adbd hangs up on the command's process group.
        super().abort()
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def inbox_put(self, command: bytes, data: bytes) -> None:
        super().inbox_put(command, data)
        if command == b"CLSE":
            self.abort()

    def serve(self) -> None:
        command = self.destination[len("shell:") :]
        self.adbd.stats.shell_commands.append(command)
        path = f"{self.adbd.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        env = {"PATH": path, "HOME": "/data/local/tmp", "TMPDIR": "/data/local/tmp"}
        env.update(self.adbd.env)
        env = {k: self.adbd.rewrite_command(v) for k, v in env.items()}
        proc = subprocess.Popen(
            ["/bin/sh", "-c", self.adbd.rewrite_command(command) if command else "true"],
            cwd=self.adbd.sandbox,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # adbd kills the whole group when the stream or transport goes away
        )
        self.proc = proc
        if self.client_closed or self.conn.closed.is_set():
            self.abort()
        pending = b""
        try:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                pending += chunk
                cut = pending.rfind(b"\n") + 1  # rewrite whole lines so a path is never split
                if cut:
                    self.write(self.adbd.rewrite_output(pending[:cut]))
                    pending = pending[cut:]
            if pending:
                self.write(self.adbd.rewrite_output(pending))
            proc.wait()
        finally:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            proc.stdout.close()


class _SyncStream(_Stream):
    """``sync:`` - the file service (SYNC.TXT, protocol v1 requests)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._buffer = bytearray()

    def _take(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._buffer += self.read()
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    def _request(self) -> tuple[bytes, int]:
        return SYNC_REQUEST.unpack(self._take(SYNC_REQUEST.size))

    def _fail(self, message: str) -> None:
        payload = message.encode()
        self.write(SYNC_REQUEST.pack(b"FAIL", len(payload)) + payload)

    def serve(self) -> None:
        while True:
            ident, length = self._request()
            if ident == b"QUIT":
                return
            if length > 1024:
                raise ProtocolError("sync path too long")
            path = self._take(length).decode("utf-8", "replace")
            handler = {b"STAT": self._stat, b"LIST": self._list, b"RECV": self._recv, b"SEND": self._send}.get(ident)
            if handler is None:
                raise ProtocolError(f"unknown sync request {ident!r}")
            handler(path)

    def _stat(self, path: str) -> None:
        host = self.adbd.host_path(path)
        try:
            st = os.lstat(host) if host else None
        except OSError:
            st = None
        if st is None:
            self.write(SYNC_STAT.pack(b"STAT", 0, 0, 0))  # v1 STAT: all zeros when lstat fails
        else:
            self.write(SYNC_STAT.pack(b"STAT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime)))

    def _list(self, path: str) -> None:
        host = self.adbd.host_path(path)
        names = [".", ".."]
        try:
            names += sorted(os.listdir(host)) if host else []
        except OSError:
            names = []
        out = bytearray()
        for name in names:
            st = os.lstat(os.path.join(host, name))
            encoded = name.encode()
            out += SYNC_DENT.pack(b"DENT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(encoded))
            out += encoded
        out += SYNC_DENT.pack(b"DONE", 0, 0, 0, 0)
        self.write(bytes(out))

    def _recv(self, path: str) -> None:
        host = self.adbd.host_path(path)
        try:
            if host is None:
                raise PermissionError(13, "Permission denied")
            with open(host, "rb") as f:
                while True:
                    chunk = f.read(SYNC_DATA_MAX)
                    if not chunk:
                        break
                    self.write(SYNC_REQUEST.pack(b"DATA", len(chunk)) + chunk)
        except OSError as exc:
            self._fail(f"open failed: {exc.strerror}")
            return
        self.write(SYNC_REQUEST.pack(b"DONE", 0))

    def _send(self, spec: str) -> None:
        path, _, mode_text = spec.rpartition(",")
        self.adbd.stats.sends.append(path)
        host = self.adbd.host_path(path)
        faults = self.adbd.faults
        error = None if host is not None else "open failed: Permission denied"
        out = None
        written = 0
        if error is None:
            try:
                host.parent.mkdir(parents=True, exist_ok=True)  # adbd makes missing parent folders
                out = open(host, "wb")
            except OSError as exc:
                error = f"open failed: {exc.strerror}"
        room = None if faults.quota_bytes is None else faults.quota_bytes - self.adbd.used_bytes()
        try:
            while True:
                ident, length = self._request()
                if ident == b"DONE":
                    mtime = length
                    break
                if ident != b"DATA" or length > SYNC_DATA_MAX:
                    raise ProtocolError(f"bad SEND packet {ident!r} of {length} bytes")
                data = self._take(length)
                written += length
                if faults.drop_after_send_bytes is not None and written >= faults.drop_after_send_bytes:
                    self.conn.drop()
                    raise _Closed()
                if error is None and room is not None and written > room:
                    error = "write failed: No space left on device"
                if error is None:
                    out.write(data)
        except _Closed:
            if out is not None:
                out.close()
                host.unlink(missing_ok=True)  # adbd removes a file whose transfer failed
            raise
        if out is not None:
            out.close()
        if error is not None:
            if host is not None and out is not None:
                host.unlink(missing_ok=True)
            self._fail(error)
            return
        if faults.corrupt_sends and written:
            faults.corrupt_sends -= 1
            with open(host, "r+b") as f:
                f.seek(written // 2)
                byte = f.read(1)
                f.seek(written // 2)
                f.write(bytes([byte[0] ^ 0xFF]))
        try:
            os.chmod(host, int(mode_text) & 0o7777 if mode_text.isdigit() else 0o644)
            os.utime(host, (mtime, mtime))
        except OSError:
            pass
        self.write(SYNC_REQUEST.pack(b"OKAY", 0))



def make_sysfs(root: Path, cpu_max_khz: dict[int, int], zone_temps: dict[str, int]) -> Path:
    """A sysfs tree with just what run_bench.sh and a probe read: cpufreq per CPU (cur = max / 2) and thermal
    zones (``{"cpu-big": 52000}``, millidegrees). Point LITESHIP_SYSFS at the returned folder."""
    for cpu, khz in cpu_max_khz.items():
        freq = root / "devices" / "system" / "cpu" / f"cpu{cpu}" / "cpufreq"
        freq.mkdir(parents=True, exist_ok=True)
        (freq / "cpuinfo_max_freq").write_text(f"{khz}\n")
        (freq / "scaling_cur_freq").write_text(f"{khz // 2}\n")
    for i, (kind, temp) in enumerate(zone_temps.items()):
        zone = root / "class" / "thermal" / f"thermal_zone{i}"
        zone.mkdir(parents=True, exist_ok=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(f"{temp}\n")
    return root
