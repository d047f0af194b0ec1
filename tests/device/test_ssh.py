"""The ssh target against a real OpenSSH server on loopback (see sshd.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from liteship.device.base import open_target
from liteship.device.ssh import SSHTarget, _parse_spec
from liteship.errors import DeviceError


@pytest.mark.parametrize("spec, expected", [
    ("ssh:board", (None, "board", None)),
    ("ssh:pi@raspberrypi.local", ("pi", "raspberrypi.local", None)),
    ("ssh:pi@10.0.0.7:2222", ("pi", "10.0.0.7", 2222)),
    ("ssh:root@[fe80::1]:22", ("root", "fe80::1", 22)),
])
def test_spec_forms(spec, expected):
    assert _parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["ssh:", "ssh:-oProxyCommand=evil", "ssh:a b", "ssh:host:port"])
def test_bad_specs_are_refused(spec):
    with pytest.raises(DeviceError, match="ssh"):
        _parse_spec(spec)


def test_run_by_alias_quotes_every_argument(board, tmp_path):
    marker = tmp_path / "pwned"
    out = board.run(["printf", "%s|", "a b", "$(touch {})".format(marker), "`id`", "'", ";", "*"])
    assert out.stdout == f"a b|$(touch {marker})|`id`|'|;|*|"
    assert not marker.exists()


def test_failed_command_is_one_line_with_exit_code_and_stderr(board):
    with pytest.raises(DeviceError) as info:
        board.run(["ls", "/no/such/dir"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("ssh:board: `ls /no/such/dir` exited 2")
    assert "No such file" in message
    assert board.run(["sh", "-c", "exit 3"], check=False).returncode == 3


def test_stdin_and_file_round_trip(board, tmp_path):
    assert board.run(["cat"], stdin=b"hello\x00world").stdout == "hello\x00world"
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    remote = str(tmp_path / "remote dir with space" / "f $(x).bin")
    board.run(["mkdir", "-p", str(Path(remote).parent)])
    board.put(src, remote)
    back = tmp_path / "back.bin"
    board.get(remote, back)
    assert back.read_bytes() == src.read_bytes()
    with pytest.raises(DeviceError, match="cannot read /no/such/file"):
        board.get("/no/such/file", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_default_workdir_is_under_remote_home(ssh_env):
    with open_target("ssh:board") as target:
        assert target.default_workdir() == str(Path.home() / ".cache" / "liteship" / "device")


def test_unknown_host_key_is_refused_with_the_fix(ssh_env):
    with open_target("ssh:board-unknown") as target, pytest.raises(DeviceError) as info:
        target.run(["true"])
    message = str(info.value)
    assert "not in known_hosts" in message and "BatchMode" in message
    assert f"ssh-keyscan -p {ssh_env.port} 127.0.0.1" in message


def test_changed_host_key_is_refused(ssh_env):
    with open_target("ssh:board-changed") as target, pytest.raises(DeviceError) as info:
        target.run(["true"])
    message = str(info.value)
    assert "CHANGED" in message
    assert f"ssh-keygen -R '[127.0.0.1]:{ssh_env.port}'" in message


def test_wrong_user_is_refused_without_a_prompt(ssh_env):
    spec = f"ssh:nobody-here@127.0.0.1:{ssh_env.port}"
    options = ["-o", f"UserKnownHostsFile={ssh_env.root}/known_hosts", "-o", "IdentitiesOnly=yes",
               "-i", f"{ssh_env.root}/id_ed25519"]
    with open_target(spec, ssh_options=options) as target, pytest.raises(DeviceError) as info:
        target.run(["true"], timeout=30)
    assert "authentication refused" in str(info.value)


def test_closed_port_is_a_clear_error(ssh_env, monkeypatch):
    from tests.device.sshd import _free_port

    port = _free_port()
    with open_target(f"ssh:127.0.0.1:{port}", multiplex=False) as target, pytest.raises(DeviceError) as info:
        target.run(["true"], timeout=30)
    assert "connection refused" in str(info.value)


def test_timeout_names_the_target(board):
    with pytest.raises(DeviceError, match=r"^ssh:board: `sleep 30` timed out after 1 s"):
        board.run(["sleep", "30"], timeout=1)


def test_connection_dropped_mid_transfer(board, ssh_env, tmp_path):
    """A put fed from a pipe: half the data is on the board when every sshd session is killed."""
    fifo = tmp_path / "stream"
    os.mkfifo(fifo)
    remote = tmp_path / "received.bin"
    chunk = os.urandom(64 * 1024)

    def feed_then_cut():
        with open(fifo, "wb") as pipe:
            pipe.write(chunk)
            pipe.flush()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (not remote.exists() or remote.stat().st_size < len(chunk)):
                time.sleep(0.02)
            assert ssh_env.kill_sessions() > 0
            try:
                pipe.write(chunk)  # the reader is gone by now or soon
            except BrokenPipeError:
                pass

    feeder = threading.Thread(target=feed_then_cut)
    feeder.start()
    with pytest.raises(DeviceError) as info:
        board.put(fifo, str(remote), timeout=60)
    feeder.join()
    assert str(info.value).startswith("ssh:board: ssh connection failed or dropped")
    # The target reconnects for the next command (a new ControlMaster).
    assert board.run(["echo", "back"]).stdout == "back\n"


def test_local_spec_rejects_arguments():
    with pytest.raises(DeviceError, match="takes no arguments"):
        open_target("local:foo")


def test_registry_opens_ssh_lazily_and_rejects_unknown_kinds():
    with pytest.raises(DeviceError, match="unknown device 'usb:1'"):
        open_target("usb:1")
    assert isinstance(open_target("ssh:somewhere", multiplex=False), SSHTarget)


def test_proxyjump_from_the_users_config_is_honoured(ssh_env, tmp_path):
    logins = ssh_env.log.read_text().count("Accepted publickey")
    with open_target("ssh:board-via-jump", workdir=str(tmp_path)) as target:
        assert target.run(["echo", "through the jump host"]).stdout == "through the jump host\n"
        assert ssh_env.log.read_text().count("Accepted publickey") == logins + 2  # the jump host, then the board
        src = tmp_path / "f.bin"
        src.write_bytes(os.urandom(10_000))
        target.put(src, str(tmp_path / "g.bin"))
    assert (tmp_path / "g.bin").read_bytes() == src.read_bytes()


def test_host_key_advice_names_the_config_and_known_hosts_in_use(ssh_env):
    """The fix must work with the config liteship used: `ssh -F CONFIG`, and the UserKnownHostsFile it names."""
    import os

    config = os.environ["LITESHIP_SSH_CONFIG"]
    for alias, fix in (("board-unknown", "ssh-keyscan"), ("board-changed", "ssh-keygen -R")):
        with open_target(f"ssh:{alias}") as target, pytest.raises(DeviceError) as info:
            target.run(["true"])
        message = str(info.value)
        known_hosts = target._settings()["userknownhostsfile"].split()[0]
        assert known_hosts != os.path.expanduser("~/.ssh/known_hosts")  # the test's own file, from its config
        assert f"known_hosts ({known_hosts})" in message and fix in message
        assert f"ssh -F {config} " in message
