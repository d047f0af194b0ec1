"""adb-server:SERIAL: a phone driven through a running adb server, as when the SDK's `adb` already holds it.

The server is Debian's real adb (AOSP 29.0.6, tests/device/host_adb.py) on a port of its own, with a key of its
own; the phone is the real AOSP adbd test phone (tests/device/real_adbd.py), which trusts the server's key and not
liteship's - so everything that works here went through the server. The server reaches the phone with
`adb connect`, the way it reaches a phone on Wi-Fi; a USB phone is the same to liteship (a serial the server lists).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

from liteship.device.adb_server import AdbServerTarget, ServerAddress, parse_spec, server_address
from liteship.device.android import ensure_adb_key
from liteship.device.base import open_target
from liteship.errors import DeviceError
from tests.device.fake_benchmark_model import MKSH_FAKE
from tests.device.real_adbd import make_sysfs

WORKDIR = "/data/local/tmp/liteship"
ALLOWED = sorted(os.sched_getaffinity(0))
PROPS = {"ro.product.manufacturer": "Google", "ro.product.model": "Pixel 7", "ro.board.platform": "gs201",
         "ro.product.cpu.abi": "arm64-v8a", "ro.build.version.release": "14", "ro.build.version.sdk": "34"}
MEMINFO = "MemTotal:        7833600 kB\nMemFree:          812345 kB\nMemAvailable:    3145728 kB\n"


# --- specs and where the server is ----------------------------------------------------------------------------


@pytest.mark.parametrize("spec, serial", [
    ("adb-server", None),
    ("adb-server:R5CT1234ABC", "R5CT1234ABC"),
    ("adb-server:192.168.1.20:5555", "192.168.1.20:5555"),  # a phone the server reached with `adb connect`
])
def test_specs(spec, serial):
    assert parse_spec(spec) == serial


@pytest.mark.parametrize("given, env, expected", [
    (None, {}, ServerAddress("127.0.0.1", 5037)),
    (None, {"ADB_SERVER_SOCKET": "tcp:lab1.example:5038"}, ServerAddress("lab1.example", 5038)),
    (None, {"ADB_SERVER_SOCKET": "tcp:5039"}, ServerAddress("127.0.0.1", 5039)),
    (None, {"ANDROID_ADB_SERVER_ADDRESS": "lab2", "ANDROID_ADB_SERVER_PORT": "6000"}, ServerAddress("lab2", 6000)),
    ("lab3:5037", {"ADB_SERVER_SOCKET": "tcp:elsewhere:1"}, ServerAddress("lab3", 5037)),  # the spec wins
    ("[fd00::7]:5037", {}, ServerAddress("fd00::7", 5037)),
])
def test_server_address(given, env, expected):
    assert server_address(given, env) == expected


@pytest.mark.parametrize("spec, message", [
    ("adb-server:", "write adb-server or adb-server:SERIAL"),
    ("adb-server:X?server=lab1", "expected HOST:PORT"),
    ("adb-server:X?server=lab1:99999", "expected HOST:PORT"),
    ("adb-server:X?sever=lab1:5037", "unknown parameter 'sever' (adb-server devices take python, server)"),
    ("adb:X?server=lab1:5037", "unknown parameter 'server' (android devices take python)"),
    ("adb-server:X?server=a:1&server=b:2", "server is given twice"),
    ("adb-server:X?server=", "'server=' is not NAME=VALUE"),
])
def test_bad_specs_are_one_clear_error(spec, message):
    with pytest.raises(DeviceError, match=re_escape(message)):
        open_target(spec)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_unix_socket_servers_are_refused_by_name():
    with pytest.raises(DeviceError, match="ADB_SERVER_SOCKET=localabstract:adb: .*tcp:HOST:PORT only"):
        server_address(None, {"ADB_SERVER_SOCKET": "localabstract:adb"})


def test_no_server_listening_says_how_to_start_one():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = open_target(f"adb-server:R5CT?server=127.0.0.1:{port}", transport_timeout_s=2)
    with pytest.raises(DeviceError, match=f"no adb server answers at 127.0.0.1:{port}.*adb start-server"):
        target.run(["true"])


# --- through a real server to the real adbd phone -------------------------------------------------------------


@pytest.fixture(scope="module")
def server_key(tmp_path_factory) -> Path:
    """The adb server's own key (the phone trusts this one), never liteship's or the user's."""
    return ensure_adb_key(tmp_path_factory.mktemp("server-key") / "adbkey")


@pytest.fixture
def held_phone(tmp_path, real_adbd, host_adb_server, server_key):
    """(phone, server, serial): a real adbd phone that trusts only the server's key, held by a real adb server.
    Its /sys is a big.LITTLE tree over this machine's CPUs (so pinning really happens)."""
    clusters = {c: 1_800_000 for c in ALLOWED[:-1]} | {ALLOWED[-1]: 2_850_000}
    sysfs = make_sysfs(tmp_path / "phone-sys", clusters, {"skin": 31000})
    phone = real_adbd(sysfs=sysfs, meminfo=MEMINFO, props=PROPS, keys=[Path(f"{server_key}.pub")])
    server = host_adb_server(server_key)
    return phone, server, server.connect(phone)


def through(server, serial: str, **options) -> AdbServerTarget:
    return open_target(f"adb-server:{serial}?server=127.0.0.1:{server.port}", **options)


def test_commands_through_the_server_keep_status_stderr_and_quoting(held_phone):
    phone, server, serial = held_phone
    with through(server, serial) as target:
        assert target.kind == "android"
        tricky = ["a b", "it's", "$HOME", "`id`", "; rm -rf /", "*", 'say "hi"', "", "ünï"]
        assert target.run(["printf", "%s\\n", *tricky]).stdout == "".join(t + "\n" for t in tricky)
        result = target.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
        assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
        assert target.run(["id", "-u"]).stdout == "2000\n"  # the phone's shell user, not this host's root
        assert target.run(["cat"], stdin=b"to stdin\n").stdout == "to stdin\n"
        long_script = "true\n" * 1500 + "echo long"
        assert target.shell(long_script).stdout == "long\n"  # longer than one OPEN message: goes as a file
        with pytest.raises(DeviceError, match="exited 3: err"):
            target.run(["sh", "-c", "echo err >&2; exit 3"])


def test_shell_v1_through_the_server(held_phone):
    """adbd before Android 7 has no shell v2: the v1 wrapper must work over the server too. (No such adbd is at
    hand, so the target is told the phone lacks the feature.)"""
    phone, server, serial = held_phone
    with through(server, serial) as target:
        target._shell_v2 = False
        result = target.run(["sh", "-c", "echo out; echo err >&2; exit 5"], check=False)
        assert (result.returncode, result.stdout, result.stderr) == (5, "out\n", "err\n")


def test_files_through_the_servers_sync_service(held_phone, tmp_path):
    phone, server, serial = held_phone
    data = os.urandom(3 * 1024 * 1024 + 17)  # several 64 KiB DATA chunks and a short last one
    local = tmp_path / "blob.bin"
    local.write_bytes(data)
    local.chmod(0o750)
    with through(server, serial) as target:
        target.run(["mkdir", "-p", WORKDIR])
        target.put(local, f"{WORKDIR}/blob.bin")
        assert phone.host_path(f"{WORKDIR}/blob.bin").read_bytes() == data
        assert target.run(["sh", "-c", f"[ -x {WORKDIR}/blob.bin ] && echo x"]).stdout == "x\n"  # mode kept
        back = tmp_path / "back.bin"
        target.get(f"{WORKDIR}/blob.bin", back)
        assert back.read_bytes() == data
        with pytest.raises(DeviceError, match="cannot read /data/local/tmp/nothing-here"):
            target.get("/data/local/tmp/nothing-here", tmp_path / "nothing")
        assert not (tmp_path / "nothing").exists() and [p.name for p in tmp_path.glob(".nothing*")] == []
        with pytest.raises(DeviceError, match="cannot write /system/bin/x"):
            target.put(local, "/system/bin/x")


def test_probe_push_and_bench_through_the_server(held_phone, tiny_bundle, tmp_path, monkeypatch):
    """The whole device path on a phone the server holds: probe (the phone's facts), push (verified on the phone)
    and bench with the benchmark_model runner, pinned to the big cores the probe named - the server found from
    ADB_SERVER_SOCKET, as the adb client finds it."""
    from liteship.device.bench import BenchSettings, bench_targets
    from liteship.device.probe import probe
    from liteship.device.push import push_bundle

    phone, server, serial = held_phone
    monkeypatch.setenv("ADB_SERVER_SOCKET", f"tcp:127.0.0.1:{server.port}")
    monkeypatch.setenv("LITESHIP_CACHE", str(tmp_path / "cache"))
    with open_target(f"adb-server:{serial}") as target:
        facts = probe(target)
        assert facts["kind"] == "android" and facts["model"] == "Google Pixel 7" and facts["python"] is None
        assert facts["memory"]["total_bytes"] == 7833600 * 1024
        assert facts["cpu"]["big_cores"] == (ALLOWED[-1:] if len(ALLOWED) > 1 else ALLOWED)
        result = push_bundle(target, tiny_bundle)
        installed = phone.host_path(result.remote_path)
        assert (installed / "model.tflite").read_bytes() == (tiny_bundle / "model.tflite").read_bytes()
    binary = tmp_path / "benchmark_model"
    binary.write_text(MKSH_FAKE)
    binary.chmod(0o755)
    settings = BenchSettings(runs=5, warmup=1, cores="big", benchmark_binary=str(binary))
    [entry] = bench_targets(tiny_bundle, [f"adb-server:{serial}"], settings)["results"]
    assert entry["ok"], entry["error"]
    assert entry["kind"] == "android" and entry["device"]["model"] == "Google Pixel 7"
    assert entry["bench"]["runs"] == 5 and entry["run"]["status"] == 0
    assert entry["run"]["cpus"] == entry["device"]["cpu"]["big_cores"] and entry["run"]["pinned"]


def test_a_server_on_another_host(held_phone):
    """`adb -a` serves other hosts: reached over this machine's network address, not loopback."""
    phone, server, serial = held_phone
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe_sock:
            probe_sock.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = probe_sock.getsockname()[0]
    except OSError:
        address = "127.0.0.1"
    if address.startswith("127."):
        pytest.skip("this machine has no network address besides loopback")
    with open_target(f"adb-server:{serial}?server={address}:{server.port}") as target:
        assert target.run(["getprop", "ro.product.model"]).stdout == "Pixel 7\n"


def test_unknown_serial_lists_what_the_server_has(held_phone):
    phone, server, serial = held_phone
    with through(server, "R5CT0000000") as target:
        with pytest.raises(DeviceError) as info:
            target.run(["true"])
    message = str(info.value)
    assert "device 'R5CT0000000' not found" in message and f"the server lists: {serial} (device)" in message
    assert "\n" not in message


def test_a_phone_that_does_not_trust_the_server_says_so(tmp_path, real_adbd, host_adb_server, server_key):
    phone = real_adbd()  # trusts no key: its prompt waits for a tap that never comes
    server = host_adb_server(server_key)
    serial = server.connect(phone, state="unauthorized")
    with through(server, serial) as target:
        with pytest.raises(DeviceError, match=r"unauthorized.*tap Allow.*server's key"):
            target.run(["true"])


def test_a_timed_out_command_is_ended_and_the_next_one_works(held_phone):
    phone, server, serial = held_phone
    with through(server, serial) as target:
        with pytest.raises(DeviceError, match="timed out after 1s"):
            target.run(["sleep", "30"], timeout=1)
        assert target.run(["echo", "still here"]).stdout == "still here\n"
    # Closing the connection made the server close the stream and adbd hang the command up.
    deadline = time.monotonic() + 10
    while any(b"sleep\x0030" in _cmdline(pid) for pid in phone.pids()):
        assert time.monotonic() < deadline, "the timed-out command still runs on the phone"
        time.sleep(0.1)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_the_usb_hint_points_at_the_server_route(held_phone, monkeypatch):
    from liteship.device.android import _usb_owned_hint

    phone, server, serial = held_phone
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(server.port))
    hint = _usb_owned_hint(serial)
    assert f"lists {serial}" in hint and f"(adb-server:{serial})" in hint


def test_importing_the_kind_does_not_import_adb_shell():
    import subprocess

    code = "import sys, liteship.device.adb_server; print('adb_shell' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
