"""probe() over the real loopback sshd (the "board" is this machine, so its facts are checkable here)."""

from __future__ import annotations

import importlib.metadata as md
import json
import platform
import shutil
from pathlib import Path

import pytest

from liteship.device.probe import format_probe, parse_probe_output, probe, summarize


def _os_release_pretty() -> str | None:
    path = Path("/etc/os-release")
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return None


def test_probe_over_ssh_reports_this_machine(board, remote_python):
    workdir = board.default_workdir()
    facts = probe(board, python=remote_python)
    assert facts["target"] == "ssh:board" and facts["kind"] == "ssh"
    assert facts["abi"] == platform.machine()
    assert facts["kernel"] == platform.release()
    assert facts["os"] == (_os_release_pretty() or f"Linux {platform.release()}")
    assert facts["cpu"]["cores"] == len(list(Path("/sys/devices/system/cpu").glob("cpu[0-9]*")))
    assert facts["python"]["version"] == platform.python_version()
    assert facts["python"]["ai_edge_litert"] == md.version("ai-edge-litert")
    assert facts["tflite_runtime"] == f"ai-edge-litert {md.version('ai-edge-litert')}"
    assert facts["storage"]["path"] == workdir
    # Free space moves while other jobs write; 10% of the disk is far more than they write during a test.
    usage = shutil.disk_usage(workdir)
    assert abs(facts["storage"]["free_bytes"] - usage.free) < 0.10 * usage.total
    assert facts["tools"]["sha256sum"]
    text = format_probe(facts)
    assert "ssh:board" in text and platform.python_version() in text
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total_gib = int(meminfo["MemTotal"].split()[0]) / 2**20
    assert "\nRAM " in text and f"{total_gib:.1f} GiB total" in text


def test_probe_without_python_says_so(board):
    facts = probe(board, python="no-such-python3")
    assert facts["python"] is None and facts["tflite_runtime"] is None
    python_row = next(line for line in format_probe(facts).splitlines() if line.startswith("Python"))
    assert python_row.endswith("not found")


# What the probe script prints on a phone (toybox): key=value lines as _SCRIPT writes them, values in the forms
# getprop, cpufreq and thermal sysfs use (kHz, millidegrees C; an unused zone reads a negative number).
ANDROID_OUTPUT = """\
uname.s=Linux
uname.r=5.15.104-android13-8
uname.m=aarch64
dt.model=
prop.ro.product.manufacturer=Google
prop.ro.product.model=Pixel 8
prop.ro.board.platform=zuma
prop.ro.soc.manufacturer=Google
prop.ro.soc.model=Tensor G3
prop.ro.product.cpu.abi=arm64-v8a
prop.ro.build.version.release=14
prop.ro.build.version.sdk=34
cpu.online=0-8
cpu.0.max_khz=1704000
cpu.1.max_khz=1704000
cpu.2.max_khz=1704000
cpu.3.max_khz=1704000
cpu.4.max_khz=2367000
cpu.5.max_khz=2367000
cpu.6.max_khz=2367000
cpu.7.max_khz=2367000
cpu.8.max_khz=2914000
cpu.0.governor=sched_pixel
cpu.big= 4 5 6 7 8
cpu.fastest= 8
mem.total_kb=7868124
mem.available_kb=3120000
df=/dev/block/dm-48 113000000 50000000 63000000 45% /data
thermal.0.type=BIG
thermal.0.temp=41500
thermal.1.type=battery
thermal.1.temp=-273000
tool.toybox=/system/bin/toybox
tool.getprop=/system/bin/getprop
"""


def test_android_probe_output_is_summarized():
    facts = summarize(parse_probe_output(ANDROID_OUTPUT), target="adb:x", kind="android", workdir="/data/local/tmp")
    assert facts["model"] == "Google Pixel 8"
    assert facts["soc"] == "Google Tensor G3"
    assert facts["abi"] == "arm64-v8a"
    assert facts["os"] == "Android 14 (SDK 34)"
    assert facts["cpu"]["cores"] == 9
    assert facts["cpu"]["big_cores"] == [4, 5, 6, 7, 8] and facts["cpu"]["fastest_cores"] == [8]
    assert facts["storage"]["free_bytes"] == 63000000 * 1024
    assert facts["memory"]["total_bytes"] == 7868124 * 1024
    assert facts["thermal"][0] == {"zone": 0, "type": "BIG", "temp_c": 41.5}
    assert facts["python"] is None
    text = format_probe(facts)
    assert "9 cores, max 2914/2367/1704 MHz, big cores 4-8, fastest 8" in text
    assert "\nRAM             7.5 GiB total, 3.0 GiB available\n" in text


def test_board_probe_output_prefers_device_tree():
    raw = parse_probe_output("dt.model=Raspberry Pi 4 Model B Rev 1.4\n"
                             "dt.compatible=raspberrypi,4-model-b brcm,bcm2711\n"
                             "uname.m=aarch64\nos.pretty=Debian GNU/Linux 12 (bookworm)\n"
                             "cpu.0.max_khz=1800000\ncpu.1.max_khz=1800000\ncpu.big= 0 1\n"
                             "py.version=3.11.2\npy.numpy=1.24.2\npy.tflite_runtime=2.14.0\n")
    facts = summarize(raw, target="ssh:pi", kind="ssh", workdir="/home/pi/.cache/liteship")
    assert facts["model"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert facts["soc"] == "brcm,bcm2711"
    assert facts["cpu"]["big_cores"] == [0, 1]  # homogeneous: every core is "big"
    assert facts["tflite_runtime"] == "tflite-runtime 2.14.0"
    ram = next(line for line in format_probe(facts).splitlines() if line.startswith("RAM"))
    assert ram.endswith("  unknown")  # no meminfo in this transcript


def test_probe_cli_json(ssh_env, capsys, monkeypatch, tmp_path):
    from liteship.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["device", "probe", "ssh:board", "--json", "--workdir", str(tmp_path)])
    assert exit_info.value.code == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["target"] == "ssh:board" and facts["storage"]["path"] == str(tmp_path)


def test_probe_cli_error_is_one_line(ssh_env, capsys):
    from liteship.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["device", "probe", "ssh:board-changed"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ssh:board-changed: the host key CHANGED") and "\n" not in err



@pytest.mark.parametrize("kind", [k for k in ("dash", "mksh", "busybox") if shutil.which(k)])
def test_probe_script_under_each_userland(kind, userland, tmp_path):
    import subprocess
    import sys

    from liteship.device.probe import probe_script

    argv, env = userland(kind)
    workdir = tmp_path / "wd"
    out = subprocess.run(argv + [probe_script(str(workdir), sys.executable)], env=env, capture_output=True,
                         text=True, timeout=60)
    facts = summarize(parse_probe_output(out.stdout), target="t", kind="local", workdir=str(workdir))
    assert facts["abi"] == platform.machine()
    assert facts["cpu"]["cores"] == len(list(Path("/sys/devices/system/cpu").glob("cpu[0-9]*")))
    assert facts["os"] == (_os_release_pretty() or f"Linux {platform.release()}")
    assert facts["memory"]["total_bytes"] > 0
    assert facts["storage"]["free_bytes"] > 0 and workdir.is_dir()
    assert facts["python"]["version"] == platform.python_version()
