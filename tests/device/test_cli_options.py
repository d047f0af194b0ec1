"""Options on the device commands reach the targets."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_adb_key_option_reaches_the_android_target(tmp_path):
    key = tmp_path / "keys" / "adbkey"
    key.parent.mkdir()
    env = dict(os.environ, HOME=str(tmp_path), LITESHIP_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "liteship.cli", "device", "probe", f"adb:127.0.0.1:{closed_port()}",
                           "--adb-key", str(key), "--adb-auth-timeout", "2"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.count("error:") == 1 and "127.0.0.1" in proc.stderr
    # the key named on the command line was made (0600), not the default one under $HOME
    assert key.is_file() and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not (tmp_path / ".android" / "adbkey").exists()
