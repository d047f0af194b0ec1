"""A real OpenSSH server on 127.0.0.1 for the device tests, run as the current user from a temporary folder.

Everything it needs is made under ``root``: host key, user key, authorized_keys, sshd_config, and a client
``ssh_config`` (used through ``LITESHIP_SSH_CONFIG``) with these aliases:

- ``board``:         the normal case; its known_hosts holds the server's real host key.
- ``board-unknown``: known_hosts is empty -> BatchMode must refuse the unknown host.
- ``board-changed``: known_hosts holds a different key for the same host:port -> OpenSSH refuses the changed key.
- ``board-via-jump``: the same server reached through ``ProxyJump board`` (a bastion in front of a board).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")


def find_sshd() -> str | None:
    for path in SSHD_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("sshd")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "liteship-test", "-f", str(path)],
                   check=True, capture_output=True)
    path.chmod(0o600)
    return path.with_suffix(".pub").read_text().strip()


class SSHServer:
    def __init__(self, root: Path, *, file_size_limit: int | None = None):
        """``file_size_limit`` (bytes) is an RLIMIT_FSIZE for sshd and every session: a write past it fails the
        way a full disk does (the write fails, the file is cut short), without needing root to mount a tmpfs."""
        self.root = Path(root)
        self.file_size_limit = file_size_limit
        self.root.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.config = self.root / "ssh_config"
        self.log = self.root / "sshd.log"

        host_pub = _keygen(self.root / "host_ed25519")
        user_pub = _keygen(self.root / "id_ed25519")
        other_host_pub = _keygen(self.root / "other_host_ed25519")
        (self.root / "authorized_keys").write_text(user_pub + "\n")
        known = f"[127.0.0.1]:{self.port}"
        (self.root / "known_hosts").write_text(f"{known} {' '.join(host_pub.split()[:2])}\n")
        (self.root / "known_hosts_empty").write_text("")
        (self.root / "known_hosts_changed").write_text(f"{known} {' '.join(other_host_pub.split()[:2])}\n")

        (self.root / "sshd_config").write_text(
            f"""\
Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.root}/host_ed25519
PidFile {self.root}/sshd.pid
AuthorizedKeysFile {self.root}/authorized_keys
UsePAM no
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
MaxSessions 64
MaxStartups 64
LogLevel VERBOSE
"""
        )
        common = f"""\
  HostName 127.0.0.1
  Port {self.port}
  User {self.user}
  IdentityFile {self.root}/id_ed25519
  IdentitiesOnly yes
  GlobalKnownHostsFile /dev/null
"""
        self.config.write_text(
            f"Host board\n{common}  UserKnownHostsFile {self.root}/known_hosts\n\n"
            f"Host board-unknown\n{common}  UserKnownHostsFile {self.root}/known_hosts_empty\n\n"
            f"Host board-changed\n{common}  UserKnownHostsFile {self.root}/known_hosts_changed\n\n"
            f"Host board-via-jump\n{common}  UserKnownHostsFile {self.root}/known_hosts\n  ProxyJump board\n"
        )

    # --- lifetime -------------------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> "SSHServer":
        sshd = find_sshd()
        if sshd is None:
            raise FileNotFoundError("sshd")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation folder, made by the package
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         preexec_fn=self._limit_file_size if self.file_size_limit else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not listen on {self.port}: {self.log.read_text()[-2000:]}")

    def _limit_file_size(self) -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (self.file_size_limit, self.file_size_limit))

    def session_pids(self) -> list[int]:
        """Every process below our sshd listener (the per-connection monitors, sessions and their commands)."""
        if self.proc is None:
            return []
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [self.proc.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found

    def kill_sessions(self) -> int:
        """Drop every open connection the way a pulled cable would look to the client (listener keeps running)."""
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill_sessions()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "SSHServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
