"""Linux boards (Raspberry Pi, Coral, Jetson, ...) through the system OpenSSH client.

Using the user's own ``ssh`` means ``~/.ssh/config`` aliases, keys, the agent, ProxyJump and known_hosts behave
exactly as they do in a terminal. liteship only adds options that make it safe to run unattended:

- ``BatchMode=yes``: never prompt. A host whose key is not in known_hosts is refused (OpenSSH's default
  ``StrictHostKeyChecking=ask`` cannot ask), and the error says how to accept it once; a *changed* key is always
  refused. liteship never edits known_hosts and never reads private keys.
- ``ConnectTimeout`` / ``ServerAliveInterval``: a board that is off or drops off the network fails in seconds.
- a private ``ControlMaster`` socket (in a fresh 0700 temp folder), so the many short commands of a push reuse one
  connection; ``close()`` ends it.

Every remote argument is quoted for the remote POSIX shell (OpenSSH joins the argv with spaces and hands it to the
login shell). Files travel as ``cat > path`` / ``cat path`` over the same connection, which works on boards with no
sftp-server (dropbear) too.

Environment: ``LITESHIP_SSH_CONFIG=PATH`` passes ``-F PATH`` (a config file used instead of ``~/.ssh/config``; the
tests use it for their loopback sshd). ``open_target("ssh:...", ssh_options=[...])`` appends raw ssh options.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence

from liteship.errors import DeviceError
from liteship.runtime.files import atomic_path

from .base import CHUNK, CommandResult, ShellTarget, _short, last_line, quote

CONNECT_TIMEOUT_S = 10
# 3 missed keep-alives 5 s apart -> a vanished board is noticed in ~15 s instead of the TCP timeout (minutes).
SERVER_ALIVE_INTERVAL_S = 5
SERVER_ALIVE_COUNT_MAX = 3
CONTROL_PERSIST_S = 60

_SPEC = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?:\[(?P<ipv6>[^\]]+)\]|(?P<host>[^:@\s\[\]]+))(?::(?P<port>\d+))?$")

# OpenSSH messages that mean the command never ran -> one line that says what to do. Checked in order.
_SSH_FAILURES: tuple[tuple[str, str], ...] = (
    (
        r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed",
        "the host key CHANGED since it was recorded in known_hosts ({known_hosts}) and OpenSSH refuses to "
        "connect (a reinstalled board, or someone in between); if the change is expected run `ssh-keygen -R {host} "
        "-f {known_hosts}` and connect once with `ssh {dest}` to record the new key",
    ),
    (
        r"No \S+ host key is known for|Host key verification failed",
        "the host key is not in known_hosts ({known_hosts}) and BatchMode cannot ask; check and accept it once with `ssh {dest}` "
        "(or `ssh-keyscan {keyscan} >> {known_hosts}`)",
    ),
    (
        r"Permission denied \(",
        "authentication refused ({line}); liteship never asks for a password: add your key to the board "
        "(`ssh-copy-id {dest}`), load it in ssh-agent, or set IdentityFile in {config}",
    ),
    (r"Could not resolve hostname", "unknown host ({line}); check the name or the alias in {config}"),
    (r"Connection refused", "connection refused ({line}); is sshd running on the board and the port right?"),
    (r"timed out|No route to host|Network is unreachable", "cannot reach the board ({line})"),
)


def _parse_spec(spec: str) -> tuple[str | None, str, int | None]:
    rest = spec[len("ssh:"):] if spec.startswith("ssh:") else ""
    match = _SPEC.match(rest)
    if not match:
        raise DeviceError(f"bad ssh device {spec!r}: expected ssh:[user@]host[:port] or ssh:ALIAS")
    host = match["ipv6"] or match["host"]
    if host.startswith("-"):
        raise DeviceError(f"bad ssh device {spec!r}: a host name cannot start with '-'")
    return match["user"], host, int(match["port"]) if match["port"] else None



@contextmanager
def _counted_pipe(source: IO[bytes], progress: Callable[[int], None]) -> Iterator[int]:
    """The read end of a pipe that a thread fills from ``source``, calling ``progress(bytes_written)`` per chunk:
    ssh reads its stdin from a file descriptor, so the count is taken on the way in (the pipe holds 64 KiB).
    If ssh stops reading (a dropped link), closing the read end on exit ends the thread with a broken pipe."""
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        sent = 0
        try:
            with os.fdopen(write_fd, "wb", buffering=0) as sink:
                while chunk := source.read(CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[sink.write(view):]
                    sent += len(chunk)
                    progress(sent)
        except OSError:  # BrokenPipeError: ssh is gone; its exit status says why
            pass

    thread = threading.Thread(target=feed, name="liteship-ssh-put", daemon=True)
    thread.start()
    try:
        yield read_fd
    finally:
        os.close(read_fd)
        thread.join()

class SSHTarget(ShellTarget):
    kind = "ssh"

    def __init__(
        self,
        name: str,
        host: str,
        *,
        user: str | None = None,
        port: int | None = None,
        ssh_options: Sequence[str] = (),
        config: str | None = None,
        workdir: str | None = None,
        multiplex: bool = True,
    ):
        super().__init__(name)
        if shutil.which("ssh") is None:
            raise DeviceError(f"{name}: the OpenSSH client `ssh` is not installed (apt-get install openssh-client)")
        self.host, self.user, self.port = host, user, port
        self.config = config if config is not None else os.environ.get("LITESHIP_SSH_CONFIG") or None
        self.ssh_options = list(ssh_options)
        self._workdir = workdir
        self._control_dir = tempfile.mkdtemp(prefix="liteship-ssh-") if multiplex else None
        self._closed = False

    @classmethod
    def from_spec(
        cls,
        spec: str,
        *,
        ssh_options: Sequence[str] = (),
        config: str | None = None,
        workdir: str | None = None,
        multiplex: bool = True,
        **options: Any,
    ) -> "SSHTarget":
        user, host, port = _parse_spec(spec)
        return cls(spec, host, user=user, port=port, ssh_options=ssh_options, config=config,
                   workdir=workdir, multiplex=multiplex)

    # --- the ssh command line -------------------------------------------------------------------------------
    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def ssh_argv(self, remote_command: str) -> list[str]:
        argv = ["ssh"]
        if self.config:
            argv += ["-F", self.config]
        argv += [
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
            "-o", f"ServerAliveInterval={SERVER_ALIVE_INTERVAL_S}",
            "-o", f"ServerAliveCountMax={SERVER_ALIVE_COUNT_MAX}",
        ]
        if self._control_dir:
            argv += [
                "-o", "ControlMaster=auto",
                "-o", f"ControlPath={self._control_dir}/%C",
                "-o", f"ControlPersist={CONTROL_PERSIST_S}",
            ]
        argv += self.ssh_options
        if self.port:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-l", self.user]
        return argv + [self.host, remote_command]

    def _execute(
        self,
        remote_command: str,
        *,
        timeout: float | None,
        stdin: bytes | IO[bytes] | None = None,
        stdout: IO[bytes] | None = None,
    ) -> CommandResult:
        if self._closed:
            raise DeviceError(f"{self.name}: target already closed")
        argv = self.ssh_argv(remote_command)
        try:
            stdin_args: dict[str, Any] = (
                {"input": stdin} if isinstance(stdin, bytes)
                else {"stdin": stdin if stdin is not None else subprocess.DEVNULL}
            )
            proc = subprocess.run(
                argv,
                **stdin_args,
                stdout=stdout if stdout is not None else subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.name}: `{_short(remote_command)}` timed out after {timeout:g} s") from None
        result = CommandResult(
            proc.returncode,
            (proc.stdout or b"").decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"),
        )
        if result.returncode == 255:
            # 255 is ssh's own failure (a remote program exiting 255 is rare enough to be reported the same way).
            raise DeviceError(self._explain_failure(result.stderr))
        return result

    def _explain_failure(self, stderr: str) -> str:
        line = last_line(stderr) or "ssh exited 255 with no message"
        for pattern, message in _SSH_FAILURES:
            if re.search(pattern, stderr):
                host, port, user = self._resolved()
                # "connect once" goes through the user's own alias/options and config file; known_hosts advice
                # names the real host and the known_hosts file that config uses (UserKnownHostsFile).
                config_flag = f"-F {quote(self.config)} " if self.config else ""
                dest = config_flag + (f"-p {self.port} {self.destination}" if self.port else self.destination)
                keyscan = f"-p {port} {host}" if port != 22 else host
                known = f"'[{host}]:{port}'" if port != 22 else host
                known_hosts = quote((self._settings().get("userknownhostsfile") or "~/.ssh/known_hosts").split()[0])
                return f"{self.name}: " + message.format(host=known, dest=dest, keyscan=keyscan, line=line,
                                                         known_hosts=known_hosts,
                                                         config=self.config or "~/.ssh/config")
        return f"{self.name}: ssh connection failed or dropped: {line}"

    def _settings(self) -> dict:
        """What ssh will use for this host (``ssh -G``: the config file, aliases, UserKnownHostsFile), lower-case keys."""
        try:
            out = subprocess.run(self.ssh_argv("")[:-2] + ["-G", self.host], capture_output=True, text=True,
                                 timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return {}
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    def _resolved(self) -> tuple[str, int, str]:
        """Host name, port and user after ~/.ssh/config (``ssh -G``), so advice names what known_hosts holds."""
        host, port, user = self.host, self.port or 22, self.user or ""
        values = self._settings()
        if not values:
            return host, port, user
        port_text = values.get("port", "")
        return (values.get("hostname", host), int(port_text) if port_text.isdigit() else port,
                values.get("user", user))

    # --- Target ---------------------------------------------------------------------------------------------
    def put(self, local: Path, remote: str, *, timeout: float | None = None,
            progress: Callable[[int], None] | None = None) -> None:
        try:
            handle = open(local, "rb")
        except OSError as exc:
            raise DeviceError(f"{self.name}: cannot read {local}: {exc.strerror}") from None
        with handle:
            if progress is None:
                result = self._execute(f"cat > {quote(remote)}", timeout=timeout, stdin=handle)
            else:
                with _counted_pipe(handle, progress) as stdin:
                    result = self._execute(f"cat > {quote(remote)}", timeout=timeout, stdin=stdin)
        if result.returncode != 0:
            raise DeviceError(f"{self.name}: cannot write {remote}: {last_line(result.stderr) or 'cat failed'}")

    def get(self, remote: str, local: Path, *, timeout: float | None = None) -> None:
        with atomic_path(local) as tmp:
            with open(tmp, "wb") as handle:
                result = self._execute(f"cat {quote(remote)}", timeout=timeout, stdout=handle)
            if result.returncode != 0:
                raise DeviceError(f"{self.name}: cannot read {remote}: {last_line(result.stderr) or 'cat failed'}")

    def default_workdir(self) -> str:
        if self._workdir is None:
            home = self.run(["sh", "-c", 'printf %s "$HOME"'], timeout=CONNECT_TIMEOUT_S + 20).stdout.strip()
            if not home.startswith("/"):
                raise DeviceError(f"{self.name}: the remote $HOME is not set ({home!r}); pass a working folder")
            self._workdir = f"{home}/.cache/liteship/device"  # the same place as the local target's
        return self._workdir

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._control_dir:
            sockets = list(Path(self._control_dir).iterdir()) if os.path.isdir(self._control_dir) else []
            if sockets:
                # Ask the master to exit; harmless if it already died with the connection.
                subprocess.run(self.ssh_argv("true")[:-2] + ["-O", "exit", self.host],
                               capture_output=True, timeout=10, check=False)
            shutil.rmtree(self._control_dir, ignore_errors=True)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

