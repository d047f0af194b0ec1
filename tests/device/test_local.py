"""The local target and the target registry."""

from __future__ import annotations

import subprocess
import sys

import pytest

from liteship.device import base
from liteship.device.base import CommandResult, Target, open_target, register_target
from liteship.device.local import LocalTarget
from liteship.errors import DeviceError


def test_local_runs_argv_without_a_shell(tmp_path):
    target = open_target("local")
    out = target.run(["printf", "%s", f"$(touch {tmp_path}/pwned)"])
    assert out == CommandResult(0, f"$(touch {tmp_path}/pwned)", "")
    assert not (tmp_path / "pwned").exists()
    assert target.shell("echo $((6 * 7))").stdout == "42\n"


def test_local_errors_are_one_line(tmp_path):
    target = open_target("local")
    with pytest.raises(DeviceError, match=r"^local: `ls /no/such` exited 2: .*No such file"):
        target.run(["ls", "/no/such"])
    with pytest.raises(DeviceError, match="^local: cannot run 'no-such-program-xyz'"):
        target.run(["no-such-program-xyz"])
    with pytest.raises(DeviceError, match="^local: `sleep` timed out after 0.5 s"):
        target.run(["sleep", "5"], timeout=0.5)
    assert target.run(["sh", "-c", "echo oops >&2; exit 4"], check=False) == CommandResult(4, "", "oops\n")


def test_local_put_get_replace_whole_files(tmp_path):
    target = open_target("local")
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 1000)
    target.put(src, str(tmp_path / "b.bin"))
    target.get(str(tmp_path / "b.bin"), tmp_path / "c.bin")
    assert (tmp_path / "c.bin").read_bytes() == b"x" * 1000
    with pytest.raises(DeviceError, match="^local: cannot copy"):
        target.put(src, str(tmp_path / "no-dir" / "b.bin"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin", "c.bin"]  # no temp files left


def test_local_workdir(monkeypatch, tmp_path):
    monkeypatch.setenv("LITESHIP_CACHE", str(tmp_path / "cache"))
    assert open_target("local").default_workdir() == str(tmp_path / "cache" / "device")
    monkeypatch.setenv("LITESHIP_LOCAL_WORKDIR", str(tmp_path / "wd"))
    assert open_target("local").default_workdir() == str(tmp_path / "wd")
    assert LocalTarget(workdir="/x").default_workdir() == "/x"


def test_a_third_party_kind_registers_like_the_built_ins(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    class Echo(Target):
        kind = "echo"

        def run(self, argv, *, timeout=None, stdin=None, check=True):
            return CommandResult(0, " ".join(argv), "")

        def put(self, local, remote, *, timeout=None):
            raise NotImplementedError

        def get(self, remote, local, *, timeout=None):
            raise NotImplementedError

    register_target("echo", ("echo", "say"), lambda spec, **options: Echo(spec))
    assert open_target("say:hi").run(["a", "b"]).stdout == "a b"
    assert open_target("echo").name == "echo"
    # By module path, resolved only when opened.
    register_target("alias-local", ("here",), "liteship.device.local:LocalTarget")
    assert isinstance(open_target("here"), LocalTarget)
    with pytest.raises(DeviceError, match="unknown device 'echoes'"):
        open_target("echoes")


def test_importing_the_registry_does_not_import_adb_shell_or_tensorflow():
    code = ("import sys, liteship.device.base, liteship.device.cli, liteship.device.bench; "
            "bad = [m for m in ('adb_shell', 'tensorflow', 'liteship.device.android', 'liteship.device.ssh') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_kinds_command_lists_android_without_loading_it():
    from click.testing import CliRunner

    from liteship.device.cli import kinds

    result = CliRunner().invoke(kinds)
    assert result.exit_code == 0
    assert "android" in result.output and "liteship.device.android:AndroidTarget.from_spec" in result.output
    assert "ssh" in result.output and "local" in result.output
