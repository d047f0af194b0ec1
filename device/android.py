"""Android phones over adb-shell: the ADB wire protocol spoken from Python, so no Android SDK is needed on the host.

Specs: ``adb`` (``$ANDROID_SERIAL``, else the first USB phone), ``adb:SERIAL`` (USB), ``adb:HOST:PORT`` (TCP, after
``adb tcpip 5555`` on the phone). The host's key is the one the Android SDK uses, ``~/.android/adbkey`` (made if
absent, kept 0600), so a phone that already trusts this computer's ``adb`` trusts liteship too.

Commands use adbd's shell protocol v2 (``shell,v2,raw:``, Android 7+): stdout, stderr and the exit status come
back as separate packets, and nothing is written on the phone to run a command (a full /data still answers).
adb-shell speaks only v1 (``shell:``: one merged stream, no exit status), so v2 is framed here over its stream
API; an adbd that refuses v2 gets the v1 fallback: stderr goes to a file on the phone that is printed after a
marker line carrying ``$?``.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import struct
import tempfile
import threading
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from liteship.errors import DeviceError
from liteship.runtime.files import atomic_path

from .base import CommandResult, ShellTarget, _short

log = logging.getLogger(__name__)

DEFAULT_WORKDIR = "/data/local/tmp/liteship"
PHONE_TMP = "/data/local/tmp"  # the one folder the shell user may always write on an Android phone
DEFAULT_KEY = "~/.android/adbkey"  # the Android SDK's key: a phone that trusts `adb` here trusts us
MAX_INLINE_COMMAND = 3000  # bytes of command sent inline in the OPEN message (adbd before Android 7: 4 KiB max)
V2_OPEN_WAIT_S = 5.0  # how long an adbd gets to accept a shell v2 stream before liteship falls back to v1

# Shell protocol v2 (AOSP system/core/adb/shell_protocol.h): each packet is a 1-byte id, a little-endian uint32
# length, then that many bytes. The exit packet carries one byte, the status.
V2_HEADER = struct.Struct("<BI")
V2_STDOUT, V2_STDERR, V2_EXIT = 1, 2, 3


@dataclass(frozen=True)
class AdbTimeouts:
    """The three adb-shell timeouts, plus the default length of a whole command.

    ``transport_s`` bounds one socket/USB read or write (a device silent this long is gone); ``auth_s`` is how long
    the phone's "Allow USB debugging?" prompt waits for the user's tap; ``read_s`` bounds the wait for one answer
    (stream OPEN, a file-sync reply); ``command_s`` is the whole-command limit when the caller gives none (benchmarks
    run for minutes, hence generous).
    """

    transport_s: float = 10.0
    auth_s: float = 60.0
    read_s: float = 30.0
    command_s: float = 900.0


# --- spec parsing -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdbAddress:
    host: str | None = None  # TCP
    port: int | None = None
    serial: str | None = None  # USB; None means the first phone found

    def describe(self) -> str:
        if self.host is not None:
            return f"{self.host}:{self.port}"
        return f"USB serial {self.serial}" if self.serial else "the first USB Android device"


_HOST_PORT = re.compile(r"^\[?(?P<host>[^\[\]]+?)\]?:(?P<port>\d{1,5})$")


def parse_spec(spec: str, environ: dict[str, str] | None = None) -> AdbAddress:
    """``adb`` | ``adb:SERIAL`` | ``adb:HOST:PORT`` -> where to connect. ``ANDROID_SERIAL`` may itself be HOST:PORT,
    as the SDK's ``adb`` allows."""
    environ = os.environ if environ is None else environ
    if spec == "adb":
        rest = environ.get("ANDROID_SERIAL", "").strip()
    elif spec.startswith("adb:"):
        rest = spec[4:].strip()
        if not rest:
            raise DeviceError(f"bad android device {spec!r}: write adb, adb:SERIAL or adb:HOST:PORT")
    else:
        raise DeviceError(f"bad android device {spec!r}: write adb, adb:SERIAL or adb:HOST:PORT")
    if not rest:
        return AdbAddress()
    match = _HOST_PORT.match(rest)
    if match:
        port = int(match["port"])
        if not 0 < port < 65536:
            raise DeviceError(f"bad android device {spec!r}: port {port} is out of range")
        return AdbAddress(host=match["host"], port=port)
    return AdbAddress(serial=rest)


# --- the user's adb key -------------------------------------------------------------------------------------


_KEY_LOCK = threading.Lock()  # several phones opened at once must not each make a different first key


def ensure_adb_key(path: str | Path | None = None) -> Path:
    """The private key file, made (with its ``.pub``) if absent and tightened to 0600 if looser. Never printed."""
    with _KEY_LOCK:
        return _ensure_adb_key(Path(path or DEFAULT_KEY).expanduser())


def _ensure_adb_key(path: Path) -> Path:
    public = Path(str(path) + ".pub")
    if not path.exists():
        from adb_shell.auth.keygen import keygen

        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Generated inside a private (0700) temporary folder and renamed in, so the key is never readable by others
        # and never half-written; the .pub goes first so a key never lacks its public half.
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".adbkey-") as tmp:
            fresh = Path(tmp) / "adbkey"
            keygen(str(fresh))
            os.chmod(fresh, 0o600)
            os.replace(str(fresh) + ".pub", public)
            os.replace(fresh, path)
        log.info("created adb key %s; the phone will ask to allow USB debugging for it", path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)
        log.warning("%s was readable by others (mode %o); set it to 600", path, mode)
    if not public.exists():
        from adb_shell.auth.keygen import write_public_keyfile

        write_public_keyfile(str(path), str(public))
    return path


def load_signer(path: Path):
    from adb_shell.auth.sign_pythonrsa import PythonRSASigner

    try:
        return PythonRSASigner.FromRSAKeyPath(str(path))
    except (ValueError, IndexError, OSError) as exc:
        raise DeviceError(f"cannot read the adb key {path}: {exc}; move it away and liteship will make a new one")


# --- a host adb server that may own the phone ---------------------------------------------------------------


def host_adb_server_devices(host: str | None = None, port: int | None = None, timeout: float = 0.5):
    """Serials a running host ``adb`` server lists (its ``host:devices`` request), or None if no server runs.
    The server is where the ``adb`` client looks (device/adb_server.py) unless ``host``/``port`` say otherwise."""
    from .adb_server import DEFAULT_PORT, ServerAddress, ServerRefused, SmartSocket, server_address

    try:
        if host is None and port is None:
            address = server_address()
        else:
            address = ServerAddress(host or "127.0.0.1", port or DEFAULT_PORT)
        conn = SmartSocket(address, timeout)
    except (OSError, DeviceError):
        return None
    with conn:
        try:
            conn.request("host:devices")
            body = conn.read_string()
        except (OSError, ServerRefused, ValueError):
            return []
    return [line.split("\t")[0] for line in body.splitlines() if "\t" in line]


def _usb_owned_hint(serial: str | None) -> str:
    owners = host_adb_server_devices()
    if owners is None:
        return ""
    listed = serial in owners if serial else bool(owners)
    what = f"lists {serial}" if listed and serial else "is running"
    through = f"adb-server:{serial}" if serial else "adb-server"
    return (
        f"; a host adb server {what} and holds the USB device: go through it ({through}), or run `adb kill-server` "
        "first, or use the phone over TCP (`adb tcpip 5555`, then adb:PHONE_IP:5555)"
    )


# --- transport ----------------------------------------------------------------------------------------------


def _tcp_transport(host: str, port: int):
    """adb-shell's TCP transport with two fixes: a write sends every byte (its socket is non-blocking, and a
    plain send() of a 1 MiB WRTE may take only part), and a closed connection is an error at once instead of
    reads of b"" spinning until the read timeout."""
    from adb_shell.transport.tcp_transport import TcpTransport

    class FullWriteTcpTransport(TcpTransport):
        def bulk_read(self, numbytes, transport_timeout_s):
            data = super().bulk_read(numbytes, transport_timeout_s)
            if not data:
                raise ConnectionResetError(f"{host}:{port} closed the connection")
            return data

        def bulk_write(self, data, transport_timeout_s):
            view = memoryview(bytes(data))
            sent = 0
            while sent < len(view):
                sent += super().bulk_write(view[sent:], transport_timeout_s)
            return sent

    return FullWriteTcpTransport(host, port)


def write_failed(name: str, remote: str, reason: str) -> DeviceError:
    """The error for a file-sync SEND the phone refused (its own reason, and what to do when /data is full)."""
    hint = "; the device is full: free space on it" if "No space left" in reason else ""
    return DeviceError(f"{name}: cannot write {remote}: {reason}{hint}")


def decode_shell_v2(chunks, name: str, command: str) -> CommandResult:
    """A shell protocol v2 stream (chunks of bytes, cut anywhere) -> stdout, stderr and the exit status."""
    out, err, status, buffer = bytearray(), bytearray(), None, b""
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= V2_HEADER.size:
            kind, length = V2_HEADER.unpack_from(buffer)
            if len(buffer) < V2_HEADER.size + length:
                break
            body = buffer[V2_HEADER.size : V2_HEADER.size + length]
            buffer = buffer[V2_HEADER.size + length :]
            if kind == V2_STDOUT:
                out += body
            elif kind == V2_STDERR:
                err += body
            elif kind == V2_EXIT and body:
                status = body[0]
    if status is None:
        raise DeviceError(f"{name}: `{_short(command)}` ended without an exit status (the shell died)")
    return CommandResult(status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


def _exception_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


# --- the target ---------------------------------------------------------------------------------------------


class AndroidTarget(ShellTarget):
    """A phone reached through adb-shell. Connects on first use; after a timeout or a lost connection the next
    call reconnects (adbd kills what the old connection was running)."""

    kind = "android"

    def __init__(
        self,
        name: str,
        address: AdbAddress,
        *,
        key_path: str | Path | None = None,
        timeouts: AdbTimeouts = AdbTimeouts(),
        workdir: str | None = None,
    ):
        super().__init__(name)
        self.address = address
        self.key_path = key_path
        self.timeouts = timeouts
        self._workdir = workdir
        self._device = None
        self._lock = threading.RLock()
        self._shell_v2: bool | None = None  # None: not tried yet on this phone

    @classmethod
    def from_spec(
        cls,
        spec: str,
        *,
        adb_key: str | Path | None = None,
        transport_timeout_s: float | None = None,
        auth_timeout_s: float | None = None,
        read_timeout_s: float | None = None,
        command_timeout_s: float | None = None,
        workdir: str | None = None,
        **options: Any,
    ) -> "AndroidTarget":
        overrides = {
            "transport_s": transport_timeout_s,
            "auth_s": auth_timeout_s,
            "read_s": read_timeout_s,
            "command_s": command_timeout_s,
        }
        timeouts = replace(AdbTimeouts(), **{k: float(v) for k, v in overrides.items() if v is not None})
        return cls(spec, parse_spec(spec), key_path=adb_key, timeouts=timeouts, workdir=workdir)

    def default_workdir(self) -> str:
        return self._workdir or DEFAULT_WORKDIR

    # --- connecting ---------------------------------------------------------------------------------------
    def _connect(self):
        if self._device is not None:
            return self._device
        try:
            from adb_shell import adb_device
        except ImportError as exc:
            raise DeviceError(f"{self.name}: Android devices need adb-shell: pip install 'liteship[device]' ({exc})")
        key = ensure_adb_key(self.key_path)
        signer = load_signer(key)
        where = self.address.describe()
        t = self.timeouts
        if self.address.host is not None:
            device = adb_device.AdbDevice(
                _tcp_transport(self.address.host, self.address.port), default_transport_timeout_s=t.transport_s
            )
        else:
            device = self._usb_device(adb_device)
        prompted = []
        try:
            device.connect(
                rsa_keys=[signer],
                transport_timeout_s=t.transport_s,
                auth_timeout_s=t.auth_s,
                read_timeout_s=t.read_s,
                auth_callback=lambda _dev: prompted.append(True),
            )
        except Exception as exc:  # noqa: BLE001 - adb-shell and libusb raise many unrelated types
            device.close()
            names = _exception_names(exc)
            if prompted:
                raise DeviceError(
                    f"{self.name}: the phone did not accept this computer's adb key ({key}) within {t.auth_s:g}s: "
                    'unlock it and tap Allow on the "Allow USB debugging?" prompt, then retry'
                ) from None
            if names & {"USBErrorBusy", "USBErrorAccess", "USBError"}:
                raise DeviceError(
                    f"{self.name}: cannot claim {where}: {exc}{_usb_owned_hint(self.address.serial)}"
                ) from None
            if names & {"ConnectionRefusedError"}:
                raise DeviceError(
                    f"{self.name}: nothing listens at {where}: with the phone on USB run `adb tcpip "
                    f"{self.address.port}` (Android's 'Wireless debugging' pairing is not supported)"
                ) from None
            if names & {"TcpTimeoutException", "AdbTimeoutError", "TimeoutError"}:
                raise DeviceError(f"{self.name}: {where} did not answer within {t.transport_s:g}s") from None
            raise DeviceError(f"{self.name}: cannot connect to {where}: {exc or type(exc).__name__}") from None
        self._device = device
        return device

    def _usb_device(self, adb_device):
        from adb_shell import exceptions

        try:
            return adb_device.AdbDeviceUsb(
                serial=self.address.serial, default_transport_timeout_s=self.timeouts.transport_s
            )
        except exceptions.InvalidTransportError:
            raise DeviceError(
                f"{self.name}: USB needs libusb1: pip install 'adb-shell[usb]' (or use TCP: adb:HOST:PORT)"
            ) from None
        except Exception as exc:  # noqa: BLE001 - UsbDeviceNotFoundError, usb1.USBError*
            raise DeviceError(
                f"{self.name}: {self.address.describe()} not found: {exc}{_usb_owned_hint(self.address.serial)}"
            ) from None

    def close(self) -> None:
        with self._lock:
            if self._device is not None:
                try:
                    self._device.close()
                finally:
                    self._device = None

    def _call(self, what: str, timeout: float, action: Callable[[Any], Any]):
        """Run ``action(device)``; map adb-shell's errors to one-line DeviceErrors and drop a broken connection."""
        with self._lock:
            device = self._connect()
            try:
                return action(device)
            except Exception as exc:  # noqa: BLE001
                # The stream state is unknown now; closing makes adbd kill whatever still runs for it.
                self.close()
                if isinstance(exc, DeviceError):
                    raise
                names = _exception_names(exc)
                if names & {"TcpTimeoutException", "AdbTimeoutError", "TimeoutError"}:
                    raise DeviceError(f"{self.name}: {what} timed out after {timeout:g}s") from None
                if names & {"OSError", "UsbReadFailedError", "UsbWriteFailedError", "AdbConnectionError"}:
                    raise DeviceError(f"{self.name}: connection lost during {what}: {exc}") from None
                raise DeviceError(f"{self.name}: {what} failed: {type(exc).__name__}: {exc}") from None

    # --- commands -----------------------------------------------------------------------------------------
    def shell(self, script: str, *, timeout: float | None = None, check: bool = True) -> CommandResult:
        result = self._execute(script, timeout=timeout, stdin=None)
        return self.check_result(script, result) if check else result

    def _execute(self, command: str, *, timeout: float | None, stdin: bytes | None) -> CommandResult:
        limit = float(timeout if timeout is not None else self.timeouts.command_s)
        what = f"`{_short(command)}`"
        marker = f"LITESHIP{uuid.uuid4().hex[:16]}"
        infile = f"{PHONE_TMP}/.liteship-stdin-{marker}"
        cleanup = []
        if stdin is not None:
            self._push_bytes(stdin, infile, timeout=limit)
            command = f"( {command}\n) <{infile}"
            cleanup.append(infile)
        if len(command.encode()) > MAX_INLINE_COMMAND:
            # The command travels in one OPEN message; old adbd accepts 4 KiB there. Long scripts go as a file.
            scriptfile = f"{PHONE_TMP}/.liteship-script-{marker}.sh"
            self._push_bytes(command.encode(), scriptfile, timeout=limit)
            command = f"sh {scriptfile}"
            cleanup.append(scriptfile)
        if cleanup:
            command = f"{command}\n__rc=$?; rm -f {' '.join(cleanup)}; exit $__rc"
        if self._shell_v2 is not False:
            result = self._call(what, limit, lambda dev: self._run_v2(dev, command, limit))
            if result is not None:
                return result
        return self._execute_v1(command, what, marker, limit)

    def _run_v2(self, dev, command: str, limit: float) -> CommandResult | None:
        """One command over shell protocol v2, or None when this adbd does not speak it (then v1 is used).

        adb-shell 0.4.4 has no v2: this reaches its stream primitives ``_open`` and ``_read_until_close`` (checked
        on 0.4.4), the only private access to it here."""
        first = self._shell_v2 is None
        try:
            wait = min(V2_OPEN_WAIT_S, limit) if first else limit
            stream = dev._open(b"shell,v2,raw:" + command.encode(), wait if first else None, wait, limit)
        except Exception as exc:  # noqa: BLE001 - an old adbd answers CLSE, which adb-shell reports as a timeout
            refused = {"AdbTimeoutError", "TcpTimeoutException", "InvalidCommandError", "InvalidResponseError"}
            if first and _exception_names(exc) & refused:
                log.info("%s: no shell protocol v2; falling back to v1", self.name)
                self._shell_v2 = False
                self.close()  # the refused stream's state is unknown
                return None
            raise
        self._shell_v2 = True
        stream.read_timeout_s = limit
        stream.transport_timeout_s = limit  # a benchmark may print nothing for minutes
        return decode_shell_v2(dev._read_until_close(stream), self.name, command)

    def _execute_v1(self, command: str, what: str, marker: str, limit: float) -> CommandResult:
        errfile = f"{PHONE_TMP}/.liteship-stderr-{marker}"
        # shell v1 has no exit status and merges stderr: stdout, then "\n<marker><rc><marker>\n", then stderr.
        wrapped = (
            f"( {command}\n) </dev/null 2>{errfile}; __rc=$?; "
            f"printf '\\n{marker}%d{marker}\\n' \"$__rc\"; cat {errfile} 2>/dev/null; rm -f {errfile}"
        )
        text = self._shell_v1(wrapped, what, limit).decode("utf-8", "replace")
        # "\r?" in case an adbd runs the command on a pty (which turns "\n" into "\r\n").
        found = list(re.finditer(rf"\r?\n{marker}(-?\d+){marker}\r?\n", text))
        if not found:
            raise DeviceError(f"{self.name}: {what} ended without an exit status (the shell died): {text[-200:]!r}")
        last = found[-1]
        return CommandResult(int(last.group(1)), text[: last.start()], text[last.end() :])

    def _shell_v1(self, command: str, what: str, limit: float) -> bytes:
        """All a ``shell:`` (v1) stream printed: stdout and stderr merged, no exit status."""
        return self._call(
            what,
            limit,
            lambda dev: dev.shell(
                command, transport_timeout_s=limit, read_timeout_s=limit, timeout_s=limit, decode=False
            ),
        )

    # --- files --------------------------------------------------------------------------------------------
    def put(self, local: Path, remote: str, *, timeout: float | None = None,
            progress: Callable[[int], None] | None = None) -> None:
        local = Path(local)
        if not local.is_file():
            raise DeviceError(f"{self.name}: cannot push {local}: not a file")
        st = local.stat()
        mode = stat.S_IFREG | stat.S_IMODE(st.st_mode)  # keeps the executable bit of a benchmark binary
        self._sync_push(str(local), remote, mode, int(st.st_mtime), timeout, progress)

    def _push_bytes(self, data: bytes, remote: str, *, timeout: float | None) -> None:
        import io

        self._sync_push(io.BytesIO(data), remote, stat.S_IFREG | 0o600, 0, timeout)

    def _sync_push(self, source, remote: str, mode: int, mtime: int, timeout: float | None,
                   progress: Callable[[int], None] | None = None) -> None:
        from adb_shell import exceptions

        read_s = float(timeout) if timeout is not None else self.timeouts.read_s
        what = f"push to {remote}"
        sent = 0

        def counted(_path, chunk_bytes: int, _total: int) -> None:  # adb-shell: after each DATA packet
            nonlocal sent
            sent += chunk_bytes
            progress(sent)

        def push(dev):
            try:
                dev.push(
                    source,
                    remote,
                    st_mode=mode,
                    mtime=mtime,
                    progress_callback=counted if progress else None,
                    transport_timeout_s=min(self.timeouts.transport_s, read_s),
                    read_timeout_s=read_s,
                )
            except exceptions.PushFailedError as exc:
                reason = exc.args[0] if exc.args else b""
                reason = reason.decode("utf-8", "replace") if isinstance(reason, (bytes, bytearray)) else str(reason)
                raise write_failed(self.name, remote, reason) from None

        self._call(what, read_s, push)

    def get(self, remote: str, local: Path, *, timeout: float | None = None) -> None:
        from adb_shell import exceptions

        read_s = float(timeout) if timeout is not None else self.timeouts.read_s

        def pull(dev, tmp_name: str):
            try:
                dev.pull(
                    remote,
                    tmp_name,
                    transport_timeout_s=min(self.timeouts.transport_s, read_s),
                    read_timeout_s=read_s,
                )
            except exceptions.AdbCommandFailureException as exc:
                reason = str(exc).replace("Command failed: ", "")
                raise DeviceError(f"{self.name}: cannot read {remote}: {reason}") from None

        with atomic_path(local) as tmp:
            self._call(f"pull of {remote}", read_s, lambda dev: pull(dev, str(tmp)))
