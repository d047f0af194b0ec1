"""The test phone itself (tests/device/real_adbd.py), checked with the Android SDK's own client: Debian's `adb`.

test_android.py trusts this phone to be what a real one is to liteship; these tests show the SDK's adb sees a
phone too: shell protocol v2 exit codes, stderr apart, stdin, exec-out, a 50 MB push and pull with checksums, and
what a phone's shell user finds there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from liteship.device.android import ensure_adb_key


@pytest.fixture
def adb(tmp_path, real_adbd):
    """adb(*args, input=None) -> CompletedProcess, with a private adb server (its own port, HOME and key) that is
    connected to a fresh phone trusting that key; the server is killed afterwards."""
    if shutil.which("adb") is None:
        pytest.fail("Debian's adb client is missing: bash .ci/adbd-build installs it")
    home = tmp_path / "home"
    key = ensure_adb_key(home / ".android" / "adbkey")
    phone = real_adbd(data_size="160m", keys=[Path(str(key) + ".pub")])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        server_port = s.getsockname()[1]
    env = dict(os.environ, HOME=str(home), ANDROID_ADB_SERVER_PORT=str(server_port))
    serial = f"127.0.0.1:{phone.port}"

    def run(*args: str, input: bytes | None = None, serial_args: bool = True) -> subprocess.CompletedProcess:
        argv = ["adb", *(["-s", serial] if serial_args else []), *args]
        return subprocess.run(argv, input=input, capture_output=True, env=env, timeout=120)

    connected = run("connect", serial, serial_args=False)
    assert b"connected to" in connected.stdout, connected
    run("wait-for-device", serial_args=True)
    run.phone = phone
    yield run
    run("kill-server", serial_args=False)


def test_shell_v2_exit_codes_stderr_and_stdin(adb):
    assert adb("shell", "false").returncode == 1
    result = adb("shell", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert adb("shell", "cat", input=b"line 1\nline 2\n").stdout == b"line 1\nline 2\n"
    mine = adb("shell", "id -u; id -g; echo \"${KSH_VERSION%% *}\"; command -v python3 || echo none").stdout
    assert mine == b"2000\n2000\n@(#)MIRBSD\nnone\n"  # the shell user, mksh, no python


def test_exec_out_and_a_large_push_and_pull_with_checksums(adb, tmp_path):
    data = os.urandom(50 * 1024 * 1024)
    src, back = tmp_path / "blob.bin", tmp_path / "back.bin"
    src.write_bytes(data)
    assert adb("push", str(src), "/data/local/tmp/blob.bin").returncode == 0
    digest = hashlib.sha256(data).hexdigest()
    assert adb("shell", "sha256sum /data/local/tmp/blob.bin").stdout.split()[0].decode() == digest
    assert adb("pull", "/data/local/tmp/blob.bin", str(back)).returncode == 0
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    raw = adb("exec-out", "head -c 1048576 /data/local/tmp/blob.bin").stdout  # no pty: bytes unchanged
    assert raw == data[: 1024 * 1024]
    stored = adb.phone.host_path("/data/local/tmp/blob.bin")
    assert stored.stat().st_uid == 2000 and stored.stat().st_size == len(data)


def test_the_shell_user_cannot_write_outside_its_folders(adb):
    result = adb("shell", "touch /data/x; touch /system/x; mkdir /data/local/tmp/ok && echo made")
    assert result.stdout == b"made\n"
    assert result.stderr.count(b"denied") + result.stderr.count(b"Read-only") >= 2, result.stderr
