"""AOSP's own adbd as the test phone, run the way a phone runs it.

The binary comes from .ci/adbd-build (AOSP adbd 29.0.6 from Debian's android-platform-tools source; set
``LITESHIP_ADBD`` to its path, or it is looked up in the CI cache). :class:`RealAdbd` starts it in a private mount and
network namespace (``unshare``, so it sees only its own loopback) inside a small root of its own:

* ``/system/bin``: adbd, ``sh`` = mksh (Android's shell) and busybox applets for the userland - no python3;
* ``/data`` a small tmpfs (a full disk is real), ``/data/local/tmp`` owned by the shell user (2000:2000, 0771),
  the trusted public keys in ``/data/misc/adb/adb_keys``;
* ``getprop`` reading the properties a test gives (a phone's property service stands behind the real one);
* ``/proc``, ``/dev`` and the host's libraries; ``/sys`` is the host's or a fixture tree standing for the phone's,
  and ``/proc/meminfo`` may be a fixture file too, so a probe's answers provably come from the device;
* adbd itself runs as uid/gid 2000 with SIGHUP at its default disposition (as init starts it), listening on
  tcp:5555 in its namespace.

The host reaches it through a TCP proxy on the host's 127.0.0.1 that this module controls (one thread has entered
the phone's network namespace to dial in), so tests can cut a connection mid-transfer or slow it down; the
target spec is ``adb:127.0.0.1:PORT``. Needs root (namespaces, mounts, switching to uid 2000).

Run as ``python real_adbd.py --launch CONFIG.json`` it is the launcher: it runs inside the new namespaces, builds
the root, drops to the shell user and execs adbd.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import queue
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ADBD_PORT = 5555  # inside the phone's own network namespace, so it never collides with anything
SHELL_UID = SHELL_GID = 2000  # AID_SHELL
SYSTEM_UID = 1000  # AID_SYSTEM
# adbd's supplementary groups on a phone: adb, log, input, inet, net_bt, net_bt_admin, sdcard_r, sdcard_rw,
# net_bw_stats, readproc, uhid (daemon/main.cpp drop_privileges).
SHELL_GROUPS = [1011, 1007, 1004, 3003, 3002, 3001, 1028, 1015, 3006, 3009, 3011]
PHONE_PATH = "/product/bin:/apex/com.android.runtime/bin:/system/bin:/system/xbin:/odm/bin:/vendor/bin"
CACHE_GLOB = "/var/cache/liteship-ci/adbd-*/adbd"
CLONE_NEWNET = 0x40000000
ADB_HEADER = struct.Struct("<6I")  # command, arg0, arg1, data length, data checksum, magic


def find_adbd() -> Path | None:
    """The adbd binary .ci/adbd-build made: ``$LITESHIP_ADBD``, else the newest one in the CI cache."""
    given = os.environ.get("LITESHIP_ADBD")
    if given:
        return Path(given) if os.access(given, os.X_OK) else None
    found = sorted(glob.glob(CACHE_GLOB))
    return Path(found[-1]) if found else None


def missing_requirements() -> str | None:
    """Why a real adbd cannot run here, or None."""
    if find_adbd() is None:
        return "no AOSP adbd binary: run `bash .ci/adbd-build` (as root) or set LITESHIP_ADBD"
    if os.geteuid() != 0:
        return "the real adbd phone needs root (private mount/network namespaces, uid 2000)"
    for tool in ("unshare", "mount", "mksh", "busybox"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (bash .ci/adbd-build installs it)"
    return None


@dataclass
class ProxyFaults:
    """What the proxy does to connections (changeable while it runs)."""

    cut_after_upload_bytes: int | None = None  # once, close the connection after the host sent this many more
    cut_after_marker: bytes | None = None  # ... counting from the first chunk the host sends that contains this
    delay_s: float = 0.0  # hold every chunk from the phone this long
    corrupt_files: int = 0  # flip the first byte of the next N files pushed (fixing the message checksum)
    refuse_services: tuple[bytes, ...] = ()  # answer an OPEN of these (prefixes) with CLSE, as an older adbd does


@dataclass
class ProxyStats:
    connections: int = 0
    cuts: int = 0
    corrupted: int = 0
    uploaded: list[int] = field(default_factory=list)  # bytes the host sent, per connection


class RealAdbd:
    """One phone: ``start()``, use ``spec``, ``stop()`` (or a ``with`` block)."""

    def __init__(self, workdir: Path, *, data_size: str = "24m", sysfs: Path | None = None,
                 meminfo: str | None = None, props: dict[str, str] | None = None, keys: list[Path] = ()):
        self.workdir = Path(workdir)
        self.data_size = data_size
        self.sysfs = sysfs
        self.meminfo = meminfo
        self.props = props or {}
        self.keys = list(keys)
        self.faults = ProxyFaults()
        self.stats = ProxyStats()
        self.binary = find_adbd()
        self._proc: subprocess.Popen | None = None
        self._listener: socket.socket | None = None
        self._dial_requests: queue.Queue = queue.Queue()
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self.port = 0

    # --- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> "RealAdbd":
        self.workdir.mkdir(parents=True, exist_ok=True)
        root = self.workdir / "root"
        root.mkdir(exist_ok=True)
        config = {
            "root": str(root),
            "adbd": str(self.binary),
            "data_size": self.data_size,
            "sysfs": str(self.sysfs) if self.sysfs else None,
            "meminfo": self.meminfo,
            "props": self.props,
            "keys": "".join(Path(k).read_text().strip() + "\n" for k in self.keys),
        }
        (self.workdir / "launch.json").write_text(json.dumps(config))
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                ["unshare", "--mount", "--net", "--propagation", "private", "--",
                 sys.executable, __file__, "--launch", str(self.workdir / "launch.json")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        threading.Thread(target=self._dialer, daemon=True).start()
        self._wait_until_listening(timeout=20)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                _close(sock)
            self._open.clear()
        self._dial_requests.put(None)
        if self._proc is not None:
            # Everything the phone started (adbd, its shells, commands left running) shares its network namespace.
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._proc.wait(10)
            self._proc = None
        try:
            (self.workdir / "root").rmdir()
        except OSError:
            pass

    def __enter__(self) -> "RealAdbd":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # --- what tests use -------------------------------------------------------------------------------------
    @property
    def spec(self) -> str:
        return f"adb:127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "adbd.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def host_path(self, phone_path: str) -> Path:
        """Where a phone path is, seen from the host (through the adbd process's root)."""
        return Path(f"/proc/{self._proc.pid}/root") / phone_path.lstrip("/")

    def authorize_key_file(self, public_key_path: Path) -> None:
        """Trust a key from now on, as tapping "Always allow" does (adbd reads adb_keys at every connection)."""
        with open(self.host_path("/data/misc/adb/adb_keys"), "a") as keys:
            keys.write(Path(public_key_path).read_text().strip() + "\n")

    def pids(self) -> list[int]:
        """Processes inside the phone (those in its network namespace)."""
        if self._proc is None:
            return []
        ns = _netns(self._proc.pid)
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _netns(int(entry)) == ns:
                found.append(int(entry))
        return found

    # --- the namespace dialer and the proxy ----------------------------------------------------------------
    def _dialer(self) -> None:
        """A thread that joins the phone's network namespace (setns affects only the calling thread) and opens
        connections to adbd there for the proxy."""
        deadline = time.monotonic() + 20
        while _netns(self._proc.pid) == _netns(os.getpid()) and time.monotonic() < deadline:
            time.sleep(0.02)
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/proc/{self._proc.pid}/ns/net", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the phone's network namespace failed")
        finally:
            os.close(fd)
        while True:
            reply = self._dial_requests.get()
            if reply is None:
                return
            try:
                reply.put(socket.create_connection(("127.0.0.1", ADBD_PORT), timeout=2))
            except OSError as exc:
                reply.put(exc)

    def _dial(self) -> socket.socket:
        reply: queue.Queue = queue.Queue()
        self._dial_requests.put(reply)
        got = reply.get(timeout=10)
        if isinstance(got, Exception):
            raise got
        got.settimeout(None)
        return got

    def _wait_until_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"adbd exited with {self._proc.returncode}:\n{self.log()}")
            try:
                _close(self._dial())
                return
            except (OSError, queue.Empty):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"adbd did not listen within {timeout}s:\n{self.log()}") from None
                time.sleep(0.05)

    def _accept_loop(self) -> None:
        listener = self._listener
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                device = self._dial()
            except (OSError, queue.Empty):
                _close(client)
                continue
            with self._lock:
                self._open += [client, device]
                index = self.stats.connections
                self.stats.connections += 1
                self.stats.uploaded.append(0)
            threading.Thread(target=self._pump, args=(client, device, index, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(device, client, index, False), daemon=True).start()

    def _cut_now(self, data: bytes) -> bool:
        with self._lock:
            faults = self.faults
            if faults.cut_after_upload_bytes is None:
                return False
            if faults.cut_after_marker is not None:
                if faults.cut_after_marker not in data:
                    return False
                faults.cut_after_marker = None
            faults.cut_after_upload_bytes -= len(data)
            if faults.cut_after_upload_bytes > 0:
                return False
            faults.cut_after_upload_bytes = None
            self.stats.cuts += 1
            return True

    def _refused(self, message: bytes) -> bool:
        return message[:4] == b"OPEN" and message[ADB_HEADER.size :].startswith(self.faults.refuse_services or (b"\0",))

    def _corrupt(self, message: bytes, stream: "_MessageSplitter") -> bytes:
        """The first byte of a pushed file's data gets flipped and the message checksum recomputed (adbd checks
        it at protocol version 0x01000000, which adb-shell speaks): the bytes that land on the phone differ from
        the ones sent, as with a bad cable or flash. The file-sync SEND request is ``SEND`` + length + path, and
        its first ``DATA`` (+ length) follows, in the same WRTE or at the start of the next."""
        if self.faults.corrupt_files <= 0 or message[:4] != b"WRTE":
            return message
        payload = bytearray(message[ADB_HEADER.size :])
        data_at = 0 if stream.data_next else -1
        stream.data_next = False
        send_at = payload.find(b"SEND")
        if send_at >= 0 and len(payload) >= send_at + 8:
            data_at = send_at + 8 + struct.unpack("<I", payload[send_at + 4 : send_at + 8])[0]
            if data_at == len(payload):
                stream.data_next = True
                return message
        if data_at < 0 or payload[data_at : data_at + 4] != b"DATA" or len(payload) <= data_at + 8:
            return message
        payload[data_at + 8] ^= 0xFF
        with self._lock:
            self.faults.corrupt_files -= 1
            self.stats.corrupted += 1
        fields = list(ADB_HEADER.unpack(message[: ADB_HEADER.size]))
        fields[4] = sum(payload) & 0xFFFFFFFF
        return ADB_HEADER.pack(*fields) + bytes(payload)

    def _pump(self, src: socket.socket, dst: socket.socket, index: int, upload: bool) -> None:
        messages = _MessageSplitter()
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upload:
                    self.stats.uploaded[index] += len(data)
                    if self._cut_now(data):
                        break
                    kept = []
                    for message in messages.feed(data):
                        if self._refused(message):
                            src.sendall(_adb_message(b"CLSE", 0, ADB_HEADER.unpack(message[:24])[1]))
                        else:
                            kept.append(self._corrupt(message, messages))
                    data = b"".join(kept)
                    if not data:
                        continue
                elif self.faults.delay_s:
                    time.sleep(self.faults.delay_s)
                dst.sendall(data)
        except OSError:
            pass
        _close(src)
        _close(dst)


def _adb_message(command: bytes, arg0: int, arg1: int) -> bytes:
    code = struct.unpack("<I", command)[0]
    return ADB_HEADER.pack(code, arg0, arg1, 0, 0, code ^ 0xFFFFFFFF)


class _MessageSplitter:
    """Cuts the host's byte stream into whole ADB messages (24-byte header, then ``length`` bytes of data)."""

    def __init__(self):
        self.buffer = b""
        self.data_next = False  # a SEND request ended the last WRTE: its DATA starts the next one

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        out = []
        while len(self.buffer) >= ADB_HEADER.size:
            length = ADB_HEADER.unpack(self.buffer[: ADB_HEADER.size])[3]
            end = ADB_HEADER.size + length
            if len(self.buffer) < end:
                break
            out.append(self.buffer[:end])
            self.buffer = self.buffer[end:]
        return out


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _netns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def make_sysfs(root: Path, cpu_max_khz: dict[int, int], zone_temps: dict[str, int],
               capacity: dict[int, int] | None = None) -> Path:
    """A sysfs tree with just what run_bench.sh and a probe read: cpufreq per CPU (cur = max / 2), optionally the
    scheduler's ``cpu_capacity`` per CPU (arm64), and thermal zones (``{"cpu-big": 52000}``, millidegrees). Mount
    it as a phone's /sys (``RealAdbd(sysfs=...)``) or point LITESHIP_SYSFS at it."""
    for cpu, khz in cpu_max_khz.items():
        freq = root / "devices" / "system" / "cpu" / f"cpu{cpu}" / "cpufreq"
        freq.mkdir(parents=True, exist_ok=True)
        (freq / "cpuinfo_max_freq").write_text(f"{khz}\n")
        (freq / "scaling_cur_freq").write_text(f"{khz // 2}\n")
    for cpu, value in (capacity or {}).items():
        folder = root / "devices" / "system" / "cpu" / f"cpu{cpu}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cpu_capacity").write_text(f"{value}\n")
    for i, (kind, temp) in enumerate(zone_temps.items()):
        zone = root / "class" / "thermal" / f"thermal_zone{i}"
        zone.mkdir(parents=True, exist_ok=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(f"{temp}\n")
    return root


# --- the launcher: runs as root inside the fresh namespaces ---------------------------------------------------


GETPROP = """#!/system/bin/sh
while IFS='=' read -r key value; do
    [ "$key" = "$1" ] && { echo "$value"; exit 0; }
done < /system/build.prop
echo
"""


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True)


def _bind_file(source: str, target: Path, *, readonly: bool = True) -> None:
    target.touch()
    _run("mount", "--bind", source, str(target))
    if readonly:
        _run("mount", "-o", "remount,bind,ro", str(target))


def launch(config_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    root = Path(config["root"])
    _run("mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "liteship-phone", str(root))

    # /system/bin: adbd, mksh as sh, busybox applets for everything else.
    bin_dir = root / "system/bin"
    bin_dir.mkdir(parents=True)
    _bind_file(config["adbd"], bin_dir / "adbd")
    _bind_file(shutil.which("mksh"), bin_dir / "mksh")
    busybox = shutil.which("busybox")
    _bind_file(busybox, bin_dir / "busybox")
    (bin_dir / "sh").symlink_to("mksh")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if not (bin_dir / applet).exists() and not (bin_dir / applet).is_symlink():
            (bin_dir / applet).symlink_to("busybox")
    # getprop answers from /system/build.prop (on a phone the property service stands behind it).
    (root / "system/build.prop").write_text("".join(f"{k}={v}\n" for k, v in config["props"].items()))
    (bin_dir / "getprop").unlink(missing_ok=True)
    (bin_dir / "getprop").write_text(GETPROP)
    (bin_dir / "getprop").chmod(0o755)
    (root / "bin").symlink_to("system/bin")  # glibc's _PATH_BSHELL, which adbd's shell service execs, is /bin/sh

    # The host's shared libraries (adbd, mksh and busybox are dynamically linked); no /usr/bin, so no python3.
    for lib in ("usr/lib", "usr/lib64"):
        if Path("/", lib).is_dir():
            (root / lib).mkdir(parents=True)
            _run("mount", "--rbind", "/" + lib, str(root / lib))
            _run("mount", "-o", "remount,bind,ro", str(root / lib))
    (root / "lib").symlink_to("usr/lib")
    if (root / "usr/lib64").is_dir():
        (root / "lib64").symlink_to("usr/lib64")

    for name in ("dev", "proc", "sys", "data", "etc"):
        (root / name).mkdir()
    _run("mount", "--rbind", "/dev", str(root / "dev"))
    _run("mount", "-t", "proc", "proc", str(root / "proc"))
    _run("mount", "--rbind", config["sysfs"] or "/sys", str(root / "sys"))
    if config["meminfo"] is not None:
        (root / "etc/.meminfo").write_text(config["meminfo"])
        _run("mount", "--bind", str(root / "etc/.meminfo"), str(root / "proc/meminfo"))
    (root / "etc/passwd").write_text("root:x:0:0:root:/:/system/bin/sh\nshell:x:2000:2000:shell:/:/system/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nshell:x:2000:\n")

    # /data: a small tmpfs, with the folders and modes a phone has.
    data = root / "data"
    _run("mount", "-t", "tmpfs", "-o", f"size={config['data_size']},mode=0771,uid={SYSTEM_UID},gid={SYSTEM_UID}",
         "liteship-data", str(data))
    for path, uid, gid, mode in (("local", 0, 0, 0o751), ("local/tmp", SHELL_UID, SHELL_GID, 0o771),
                                 ("misc", SYSTEM_UID, 9998, 0o1771), ("misc/adb", SYSTEM_UID, SHELL_GID, 0o2750)):
        (data / path).mkdir()
        os.chown(data / path, uid, gid)
        os.chmod(data / path, mode)
    keys = data / "misc/adb/adb_keys"
    keys.write_text(config["keys"])
    os.chown(keys, SYSTEM_UID, SHELL_GID)
    os.chmod(keys, 0o640)

    _run(busybox, "ip", "link", "set", "lo", "up")  # the namespace's only interface

    os.chroot(root)
    os.chdir("/")
    os.setgroups(SHELL_GROUPS)
    os.setgid(SHELL_GID)
    os.setuid(SHELL_UID)
    # init starts adbd with default signal dispositions: a command whose connection is gone gets SIGHUP and ends.
    for sig in (signal.SIGHUP, signal.SIGPIPE, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    env = {"PATH": PHONE_PATH, "ANDROID_DATA": "/data", "ANDROID_ROOT": "/system", "ADBD_PORT": str(ADBD_PORT)}
    os.execve("/system/bin/adbd", ["adbd"], env)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--launch":
        launch(sys.argv[2])
    else:
        sys.exit(f"usage: {sys.argv[0]} --launch CONFIG.json")
