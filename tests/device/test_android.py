"""AndroidTarget against the loopback adbd (tests/device/adbd.py): adb-shell speaking the real wire protocol over
real TCP to a device whose shell commands really run, in a sandbox standing for the phone's storage.

Covers the key (made, 0600, accepted or denied on the phone), run/put/get, then probe, push and the android_bench
script end to end through D1's generic device code, and the faults: a connection dropped mid-push, a corrupted
file, a full disk, a slow device hitting its timeout.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from adbd import FakeAdbd, make_sysfs
from liteship.device.android import (
    AdbAddress,
    AndroidTarget,
    _usb_owned_hint,
    ensure_adb_key,
    host_adb_server_devices,
    parse_run_bench_result,
    parse_spec,
    run_bench_argv,
    run_bench_script,
)
from liteship.device.base import open_target
from liteship.errors import DeviceError

WORKDIR = "/data/local/tmp/liteship"
ALLOWED = sorted(os.sched_getaffinity(0))


@pytest.fixture(scope="session")
def adb_key(tmp_path_factory) -> Path:
    """One key for the session (RSA-2048 generation takes a moment), never the user's ~/.android/adbkey."""
    return ensure_adb_key(tmp_path_factory.mktemp("android") / "adbkey")


@pytest.fixture
def phone(tmp_path, adb_key):
    """A phone that already trusts the test key; its "/sys" for run_bench.sh is a made-up big.LITTLE tree."""
    sysfs = make_sysfs(tmp_path / "phone-sys", {c: 1_800_000 for c in ALLOWED[:-1]} | {ALLOWED[-1]: 2_803_200},
                       {"cpu-0-0-usr": 38000, "battery": 29000})
    props = {"ro.product.manufacturer": "Google", "ro.product.model": "Pixel 7", "ro.board.platform": "gs201",
             "ro.product.cpu.abi": "arm64-v8a", "ro.build.version.release": "14", "ro.build.version.sdk": "34"}
    with FakeAdbd(tmp_path / "phone", props=props, env={"LITESHIP_SYSFS": str(sysfs)}) as adbd:
        adbd.authorize_key_file(Path(str(adb_key) + ".pub"))
        yield adbd


def connect(adbd: FakeAdbd, adb_key: Path, **options) -> AndroidTarget:
    options = {"auth_timeout_s": 2, "transport_timeout_s": 5, "read_timeout_s": 10} | options
    return open_target(adbd.spec, adb_key=str(adb_key), **options)


@pytest.fixture
def android(phone, adb_key):
    target = connect(phone, adb_key)
    yield target
    target.close()


def on_phone(adbd: FakeAdbd, phone_path: str) -> Path:
    return adbd.host_path(phone_path)


# --- specs, keys, the host adb server -------------------------------------------------------------------------


@pytest.mark.parametrize("spec, env, expected", [
    ("adb", {}, AdbAddress()),
    ("adb", {"ANDROID_SERIAL": "R5CT1234ABC"}, AdbAddress(serial="R5CT1234ABC")),
    ("adb", {"ANDROID_SERIAL": "192.168.1.20:5555"}, AdbAddress(host="192.168.1.20", port=5555)),
    ("adb:emulator-5554", {}, AdbAddress(serial="emulator-5554")),
    ("adb:phone.lan:5555", {}, AdbAddress(host="phone.lan", port=5555)),
    ("adb:[fe80::1]:5555", {}, AdbAddress(host="fe80::1", port=5555)),
])
def test_specs(spec, env, expected):
    assert parse_spec(spec, env) == expected


def test_bad_spec_names_the_forms():
    with pytest.raises(DeviceError, match="adb:SERIAL or adb:HOST:PORT"):
        parse_spec("adb:", {})
    with pytest.raises(DeviceError, match="port 70000 is out of range"):
        parse_spec("adb:phone:70000", {})


def test_importing_the_android_kind_does_not_import_adb_shell():
    """bench.py imports this module for run_bench.sh on every target kind; adb-shell loads only to connect."""
    import subprocess

    code = "import sys, liteship.device.android, liteship.device.bench; print('adb_shell' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_key_is_created_private_and_tightened(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    key = ensure_adb_key()  # the default place, as the Android SDK's adb keeps it
    assert key == tmp_path / ".android" / "adbkey"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert Path(str(key) + ".pub").read_text().split()[0]  # base64 of Android's RSAPublicKey struct
    assert sorted(p.name for p in key.parent.iterdir()) == ["adbkey", "adbkey.pub"]  # no temporary left
    before = key.read_bytes()
    key.chmod(0o644)
    assert ensure_adb_key() == key
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes() == before  # tightened, not replaced: the phone's trust in it stays valid


def test_first_connection_asks_the_phone_then_the_key_is_trusted(tmp_path, adb_key):
    with FakeAdbd(tmp_path / "phone") as adbd:
        first = connect(adbd, adb_key)
        assert first.run(["echo", "hi"]).stdout == "hi\n"
        first.close()
        assert len(adbd.stats.prompts) == 1
        assert adbd.stats.prompts[0].split()[0] == Path(str(adb_key) + ".pub").read_text().split()[0]
        second = connect(adbd, adb_key)
        assert second.run(["true"]).returncode == 0
        second.close()
        assert len(adbd.stats.prompts) == 1  # the signature was accepted; no second prompt
        assert adbd.stats.connections == 2


def test_denied_key_says_to_allow_usb_debugging(tmp_path, adb_key):
    with FakeAdbd(tmp_path / "phone") as adbd:
        adbd.faults.deny_new_keys = True
        target = connect(adbd, adb_key, auth_timeout_s=0.5)
        with pytest.raises(DeviceError, match='tap Allow on the "Allow USB debugging\\?" prompt') as info:
            target.run(["true"])
        assert str(adb_key) in str(info.value) and "PRIVATE" not in str(info.value)
        assert len(adbd.stats.prompts) == 1


def test_nothing_listening_is_a_clear_error(adb_key):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free now, and nothing listens on it
    target = open_target(f"adb:127.0.0.1:{port}", adb_key=str(adb_key), transport_timeout_s=2)
    with pytest.raises(DeviceError, match=f"nothing listens at 127.0.0.1:{port}.*adb tcpip") as info:
        target.run(["true"])
    assert "enable wireless debugging" not in str(info.value)  # adb-shell cannot pair; tcpip is the way


def test_usb_spec_without_a_usb_phone_is_a_clear_error(adb_key):
    target = open_target("adb:R5CT1234ABC", adb_key=str(adb_key))
    with pytest.raises(DeviceError, match="adb:R5CT1234ABC: .*(USB|usb)"):
        target.run(["true"])


def test_host_adb_server_is_detected(monkeypatch):
    """A host adb server (its smart-socket protocol: 4 hex digits of length, the request, OKAY + length + body)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    seen = []

    def answer():
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                length = int(conn.recv(4), 16)
                seen.append(conn.recv(length))
                body = b"R5CT1234ABC\tdevice\nemulator-5554\toffline\n"
                conn.sendall(b"OKAY" + b"%04x" % len(body) + body)

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(port))
        assert host_adb_server_devices() == ["R5CT1234ABC", "emulator-5554"]
        hint = _usb_owned_hint("R5CT1234ABC")  # what a failed USB claim adds to its error
        assert "a host adb server lists R5CT1234ABC" in hint and "`adb kill-server`" in hint and "adb tcpip" in hint
    finally:
        thread.join(5)
        server.close()
    assert seen == [b"host:devices"] * 2
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(port))  # closed now: no server
    assert host_adb_server_devices() is None


# --- commands and files ---------------------------------------------------------------------------------------


def test_run_quotes_every_argument_and_keeps_exit_status_and_stderr_apart(android):
    tricky = ["a b", "it's", "$HOME", "`id`", "; rm -rf /", "*", 'say "hi"', "", "tab\there", "ünï"]
    assert android.run(["printf", "%s\\n", *tricky]).stdout == "".join(t + "\n" for t in tricky)
    result = android.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    with pytest.raises(DeviceError, match=r"^adb:127\.0\.0\.1:\d+: `sh -c .*` exited 3: err$"):
        android.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert android.run(["printf", "no newline"]).stdout == "no newline"
    assert android.run(["cat"], stdin=b"line 1\nline 2\n").stdout == "line 1\nline 2\n"


def test_long_scripts_go_as_a_file(android, phone):
    script = "x=0\n" + "x=$((x + 1))\n" * 2000 + 'echo "$x"\n'  # ~26 KB, far over one OPEN message
    assert android.shell(script).stdout == "2000\n"
    assert sorted(p.name for p in on_phone(phone, "/data/local/tmp").iterdir()) == []  # nothing left behind


def test_put_and_get_round_trip(android, phone, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)  # several 64 KiB sync chunks and several 1 MiB WRTEs
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    src.chmod(0o755)
    android.run(["mkdir", "-p", WORKDIR])
    android.put(src, f"{WORKDIR}/blob.bin")
    stored = on_phone(phone, f"{WORKDIR}/blob.bin")
    assert stored.read_bytes() == data
    assert stat.S_IMODE(stored.stat().st_mode) & 0o100  # the executable bit survives (benchmark binaries)
    back = tmp_path / "back.bin"
    android.get(f"{WORKDIR}/blob.bin", back)
    assert back.read_bytes() == data
    with pytest.raises(DeviceError, match="cannot read /data/local/tmp/liteship/missing: .*No such file"):
        android.get(f"{WORKDIR}/missing", tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


def shrink_send_buffer(device) -> None:
    """A small, fixed SO_SNDBUF on adb-shell's connected socket (its internals): one send() of a 1 MiB WRTE then
    takes at most ~32 KiB, as happens on a slow Wi-Fi link, deterministically."""
    device._io_manager._transport._connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)


def test_large_writes_are_sent_whole(phone, adb_key, tmp_path):
    """Regression: adb-shell's TcpTransport.bulk_write sends once on its non-blocking socket and ignores a short
    write, so the tail of a large WRTE is lost and the push waits for an OKAY that never comes."""
    from adb_shell.adb_device import AdbDeviceTcp
    from adb_shell.auth.sign_pythonrsa import PythonRSASigner

    data = os.urandom(1024 * 1024)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)

    plain = AdbDeviceTcp("127.0.0.1", phone.port, default_transport_timeout_s=1)
    plain.connect(rsa_keys=[PythonRSASigner.FromRSAKeyPath(str(adb_key))], auth_timeout_s=1)
    shrink_send_buffer(plain)
    with pytest.raises(Exception, match="timed out"):  # the unfixed transport
        plain.push(str(src), "/data/local/tmp/plain.bin", read_timeout_s=2)
    plain.close()

    target = connect(phone, adb_key)
    target.run(["true"])
    shrink_send_buffer(target._device)
    target.put(src, "/data/local/tmp/fixed.bin")
    assert on_phone(phone, "/data/local/tmp/fixed.bin").read_bytes() == data
    target.close()


def test_slow_device_hits_the_timeout_and_the_next_call_reconnects(android, phone):
    with pytest.raises(DeviceError, match=r"`sleep 3; touch /data/local/tmp/late` timed out after 0.5s"):
        android.shell("sleep 3; touch /data/local/tmp/late", timeout=0.5)
    assert android.run(["echo", "back"]).stdout == "back\n"  # a fresh connection
    phone.faults.reply_delay_s = 1.0  # now every message from the phone is late
    with pytest.raises(DeviceError, match="timed out after 0.3s"):
        android.run(["true"], timeout=0.3)
    phone.faults.reply_delay_s = 0.0
    time.sleep(3)
    assert not on_phone(phone, "/data/local/tmp/late").exists()  # adbd killed it with the dropped connection


# --- probe, push, bench through the generic device code -------------------------------------------------------


def test_probe(android):
    from liteship.device.probe import probe

    facts = probe(android)
    text = json.dumps(facts)
    for expected in ("Pixel 7", "arm64-v8a", "gs201", "14"):
        assert expected in text, (expected, facts)


def bundle_on_phone(phone: FakeAdbd, name: str) -> Path:
    return on_phone(phone, f"{WORKDIR}/bundles/{name}")


def partials(phone: FakeAdbd) -> list[str]:
    bundles = on_phone(phone, f"{WORKDIR}/bundles")
    return sorted(p.name for p in bundles.iterdir() if p.name.startswith(".")) if bundles.exists() else []


def test_push_installs_a_verified_bundle(android, phone, tiny_bundle):
    from liteship.device.push import push_bundle

    result = push_bundle(android, tiny_bundle)
    installed = bundle_on_phone(phone, tiny_bundle.name)
    assert result.remote_path == f"{WORKDIR}/bundles/{tiny_bundle.name}"
    for f in tiny_bundle.rglob("*"):
        if f.is_file():
            assert (installed / f.relative_to(tiny_bundle)).read_bytes() == f.read_bytes()
    sends = len(phone.stats.sends)
    again = push_bundle(android, tiny_bundle)
    assert again.unchanged and len(phone.stats.sends) == sends  # same hashes on the phone: nothing sent
    assert partials(phone) == []


def test_connection_dropped_mid_push_leaves_no_partial_bundle(android, phone, tiny_bundle):
    from liteship.device.push import push_bundle

    phone.faults.drop_after_send_bytes = 1000
    lost = r"connection lost during push to .*/\.tiny-classifier\.partial-.*closed the connection"
    with pytest.raises(DeviceError, match=lost):
        push_bundle(android, tiny_bundle)
    assert phone.stats.drops == 1
    assert not bundle_on_phone(phone, tiny_bundle.name).exists()
    assert partials(phone) == []  # push's clean-up reconnected and removed the partial folder
    phone.faults.drop_after_send_bytes = None
    push_bundle(android, tiny_bundle)
    assert bundle_on_phone(phone, tiny_bundle.name).is_dir()


def test_corrupted_file_fails_verification_and_is_rolled_back(android, phone, tiny_bundle):
    from liteship.device.push import push_bundle

    phone.faults.corrupt_sends = 1
    with pytest.raises(DeviceError, match="failed its sha256 check on the device"):
        push_bundle(android, tiny_bundle)
    assert not bundle_on_phone(phone, tiny_bundle.name).exists() and partials(phone) == []


def test_full_disk_is_a_clear_error(android, phone, tiny_bundle):
    from liteship.device.push import push_bundle

    phone.faults.quota_bytes = phone.used_bytes() + 1000
    with pytest.raises(DeviceError, match="No space left on device; the device is full"):
        push_bundle(android, tiny_bundle)
    assert not bundle_on_phone(phone, tiny_bundle.name).exists() and partials(phone) == []


def test_bench_end_to_end_with_run_bench_sh(android, phone, tiny_bundle):
    """Push the bundle and run_bench.sh, run liteship's Python runner under it pinned to the big core, read the
    result file and the runner's JSON back. (The phone's "python" is this venv's, as on a board with Python.)"""
    from liteship.device.push import push_bundle

    remote_bundle = push_bundle(android, tiny_bundle).remote_path
    script = f"{WORKDIR}/run_bench.sh"
    android.put(run_bench_script(), script)
    result_path, output_path = f"{WORKDIR}/results/r1.txt", f"{WORKDIR}/results/r1.json"
    android.run(["mkdir", "-p", f"{WORKDIR}/results"])
    runner = [sys.executable, "-m", "liteship.runtime.bench", remote_bundle, "--runs", "5", "--warmup", "1",
              "--json", output_path]
    argv = run_bench_argv(script, result_path, runner, output=f"{WORKDIR}/results/r1.log", cores="big",
                          cool_below_c=90, cool_max_wait_s=5, sample_interval_s=0.05)
    android.run(argv, timeout=120)

    local = phone.sandbox.parent / "r1.txt"
    android.get(result_path, local)
    r = parse_run_bench_result(local.read_text())
    log = android.run(["cat", f"{WORKDIR}/results/r1.log"]).stdout
    assert r["status"] == 0, log
    if len(ALLOWED) > 1:
        assert r["pinned"] and r["cpus"] == [ALLOWED[-1]]
    assert r["thermal_before"][0] == {"zone": "thermal_zone0", "type": "cpu-0-0-usr", "temp_c": 38.0}
    assert r["peak_rss_bytes"] > 10 * 1024 * 1024  # a Python process with numpy and an interpreter loaded
    bench = json.loads(android.run(["cat", output_path]).stdout)
    assert bench["schema"] == "liteship.bench/1" and bench["runs"] == 5
    assert bench["model"]["sha256"] == hashlib.sha256((tiny_bundle / "model.tflite").read_bytes()).hexdigest()


@pytest.mark.device
def test_real_phone(tmp_path):
    """LITESHIP_TEST_DEVICE=adb:SERIAL (or adb:HOST:PORT) runs this against a real phone with the user's key."""
    spec = os.environ["LITESHIP_TEST_DEVICE"]
    if not spec.startswith("adb"):
        pytest.skip(f"{spec} is not an Android device")
    from liteship.device.probe import probe

    with open_target(spec) as phone:
        result = phone.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
        assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
        assert probe(phone)["kind"] == "android"
        workdir = f"{phone.default_workdir()}/test"
        phone.run(["mkdir", "-p", workdir])
        phone.put(run_bench_script(), f"{workdir}/run_bench.sh")
        phone.run(run_bench_argv(f"{workdir}/run_bench.sh", f"{workdir}/r.txt", ["sleep", "1"], cores="big",
                                 cool_below_c=80, cool_max_wait_s=10), timeout=60)
        phone.get(f"{workdir}/r.txt", tmp_path / "r.txt")
        r = parse_run_bench_result((tmp_path / "r.txt").read_text())
        assert r["status"] == 0 and r["peak_rss_bytes"]
        phone.run(["rm", "-rf", workdir])


def test_bench_targets_on_two_phones_one_refusing(phone, adb_key, tiny_bundle, tmp_path, monkeypatch):
    """D1's orchestration over two adb targets at once: the trusting phone gives a full result pinned to its big
    core; the one whose user taps Deny gives an error entry, and neither loses the other's result."""
    from liteship.device.bench import BenchSettings, bench_targets

    monkeypatch.setenv("LITESHIP_CACHE", str(tmp_path / "cache"))
    with FakeAdbd(tmp_path / "phone-2") as refusing:
        refusing.faults.deny_new_keys = True
        settings = BenchSettings(runs=5, warmup=1, python=sys.executable, cores="big", cool_below_c=90)
        options = {"adb_key": str(adb_key), "auth_timeout_s": 1}
        doc = bench_targets(tiny_bundle, [phone.spec, refusing.spec], settings, target_options=options)
    good, bad = doc["results"]
    assert good["ok"], good["error"]
    assert good["kind"] == "android" and good["device"]["kind"] == "android"
    assert good["bench"]["schema"] == "liteship.bench/1" and good["bench"]["runs"] == 5
    assert good["run"]["status"] == 0 and good["run"]["peak_rss_bytes"] > 0
    if len(ALLOWED) > 1:
        assert good["run"]["pinned"] and good["run"]["cpus"] == [ALLOWED[-1]]
    assert not bad["ok"] and "Allow USB debugging" in bad["error"]
