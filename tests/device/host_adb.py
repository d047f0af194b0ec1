"""The Android SDK's own adb server (Debian's ``adb`` package, AOSP 29.0.6) as the host server that holds a phone.

:class:`HostAdbServer` runs ``adb -a -P PORT nodaemon server`` with a private HOME, so its key
(``HOME/.android/adbkey``) is the test's and the user's own server on 5037 is never touched. ``connect(phone)``
makes it reach a real adbd test phone (tests/device/real_adbd.py) the way ``adb connect HOST:PORT`` does; the
phone's serial on the server is then ``127.0.0.1:PORT`` of the phone's proxy.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def missing_requirements() -> str | None:
    if shutil.which("adb") is None:
        return "the adb client/server is not installed (apt-get install adb)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HostAdbServer:
    def __init__(self, workdir: Path, key: Path):
        """``key``: a private adb key (its ``.pub`` beside it) the server uses as its own."""
        self.workdir = Path(workdir)
        self.home = self.workdir / "home"
        (self.home / ".android").mkdir(parents=True, exist_ok=True)
        for suffix in ("", ".pub"):
            target = self.home / ".android" / f"adbkey{suffix}"
            shutil.copyfile(f"{key}{suffix}", target)
            target.chmod(0o600)
        self.port = _free_port()
        self._proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ADB_", "ANDROID_"))}
        return env | {"HOME": str(self.home)}

    def start(self) -> "HostAdbServer":
        log = open(self.workdir / "adb-server.log", "wb")
        with log:
            # -a: listen on every interface, as a device lab's server does for other hosts.
            self._proc = subprocess.Popen(["adb", "-a", "-P", str(self.port), "nodaemon", "server"], env=self.env,
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 20
        while self.adb("version", check=False).returncode != 0 or not self._listening():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"adb server did not start:\n{self.log()}")
            time.sleep(0.1)
        return self

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)
            self._proc = None

    def log(self) -> str:
        return (self.workdir / "adb-server.log").read_text(errors="replace")

    def adb(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """The real ``adb`` client, talking to this server."""
        return subprocess.run(["adb", "-P", str(self.port), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=check)

    def connect(self, phone, *, state: str = "device", timeout: float = 20) -> str:
        """``adb connect`` the real adbd phone and wait until the server lists it in ``state``; its serial."""
        serial = f"127.0.0.1:{phone.port}"
        self.adb("connect", serial)
        deadline = time.monotonic() + timeout
        while True:
            listed = dict(line.split("\t", 1) for line in self.adb("devices").stdout.splitlines() if "\t" in line)
            if listed.get(serial) == state:
                return serial
            if time.monotonic() > deadline:
                raise RuntimeError(f"{serial} is {listed.get(serial)!r} on the server, not {state!r}:\n{self.log()}")
            time.sleep(0.1)
