"""AndroidTarget against a real phone's adbd: AOSP adbd built from Debian's source (.ci/adbd-build), run by
tests/device/real_adbd.py as a phone runs it (its own namespaces, uid 2000, mksh and busybox, /data a small tmpfs),
reached by adb-shell over real TCP through a proxy the tests control.

Covers the key (made, 0600, trusted or left pending on the phone's prompt), run/put/get, then probe, push and the
android_bench script end to end through the generic device code, and the faults: a connection cut mid-push, a full
/data, a slow link, a command timing out. A corrupted file is the one fault a real adbd cannot produce; that test
keeps the loopback fake (tests/device/adbd.py).
"""

from __future__ import annotations

import os
import secrets
import socket
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from liteship.device.android import (
    AdbAddress,
    AndroidTarget,
    _usb_owned_hint,
    ensure_adb_key,
    host_adb_server_devices,
    parse_spec,
)
from liteship.device.base import open_target
from liteship.device.run_bench import parse_run_bench_result, run_bench_argv, run_bench_script
from liteship.errors import DeviceError
from tests.device.fake_benchmark_model import MKSH_FAKE
from tests.device.real_adbd import make_sysfs

WORKDIR = "/data/local/tmp/liteship"
ALLOWED = sorted(os.sched_getaffinity(0))
PROPS = {"ro.product.manufacturer": "Google", "ro.product.model": "Pixel 7", "ro.board.platform": "gs201",
         "ro.product.cpu.abi": "arm64-v8a", "ro.build.version.release": "14", "ro.build.version.sdk": "34"}
MEMINFO = "MemTotal:        7833600 kB\nMemFree:          812345 kB\nMemAvailable:    3145728 kB\n"


@pytest.fixture(scope="session")
def adb_key(tmp_path_factory) -> Path:
    """One key for the session (RSA-2048 generation takes a moment), never the user's ~/.android/adbkey."""
    return ensure_adb_key(tmp_path_factory.mktemp("android") / "adbkey")


def public(key: Path) -> Path:
    return Path(str(key) + ".pub")


@pytest.fixture
def phone(tmp_path, adb_key, real_adbd):
    """A phone that already trusts the test key; its /sys is a made-up big.LITTLE tree over this machine's CPUs
    (so pinning really happens) and its /proc/meminfo says 7.5 GiB."""
    sysfs = make_sysfs(tmp_path / "phone-sys", {c: 1_800_000 for c in ALLOWED[:-1]} | {ALLOWED[-1]: 2_803_200},
                       {"cpu-0-0-usr": 38000, "battery": 29000})
    return real_adbd(sysfs=sysfs, meminfo=MEMINFO, props=PROPS, keys=[public(adb_key)])


def connect(adbd, adb_key: Path, **options) -> AndroidTarget:
    options = {"auth_timeout_s": 2, "transport_timeout_s": 5, "read_timeout_s": 10} | options
    return open_target(adbd.spec, adb_key=str(adb_key), **options)


@pytest.fixture
def android(phone, adb_key):
    target = connect(phone, adb_key)
    yield target
    target.close()


def on_phone(adbd, phone_path: str) -> Path:
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
    """Opening any target may import the android kind; adb-shell loads only to connect to a phone."""
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


def test_untrusted_key_waits_on_the_prompt_then_fails_in_one_line(tmp_path, adb_key, real_adbd):
    """A real adbd shows one "Allow USB debugging?" prompt and keeps it pending; later connections with an unknown
    key are skipped ("prompt currently pending"). Each try must end within --adb-auth-timeout with one clear line,
    and once the user allows the key (adb_keys) the next connection works."""
    phone = real_adbd()
    for _ in range(2):
        target = connect(phone, adb_key, auth_timeout_s=1)
        started = time.monotonic()
        with pytest.raises(DeviceError, match='tap Allow on the "Allow USB debugging\\?" prompt') as info:
            target.run(["true"])
        assert time.monotonic() - started < 1 + 3  # the auth timeout, plus the handshake
        message = str(info.value)
        assert "\n" not in message and str(adb_key) in message and "PRIVATE" not in message
        assert "within 1s" in message
    log = phone.log()
    assert log.count("prompting user for adb authentication") == 1
    assert "prompt currently pending, skipping" in log
    phone.authorize_key_file(public(adb_key))
    trusted = connect(phone, adb_key)
    assert trusted.run(["id", "-u"]).stdout == "2000\n"
    trusted.close()


def test_a_trusted_key_connects_without_a_prompt(phone, adb_key):
    target = connect(phone, adb_key)
    assert target.run(["echo", "hi"]).stdout == "hi\n"
    target.close()
    assert "adb client authorized" in phone.log()
    assert "prompting user" not in phone.log()


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


def test_a_full_data_still_answers_with_stderr_and_status(android, phone):
    """Regression: the shell v1 wrapper sent stderr through a file in /data/local/tmp, so on a full phone every
    command lost its stderr. Shell protocol v2 brings it back as its own stream, writing nothing on the phone."""
    fill(phone, 0)
    result = android.run(["sh", "-c", "echo out; echo err >&2; exit 2"], check=False)
    assert (result.returncode, result.stdout, result.stderr) == (2, "out\n", "err\n")
    assert sorted(p.name for p in on_phone(phone, "/data/local/tmp").iterdir()) == []


def test_an_adbd_without_shell_v2_gets_the_v1_wrapper(android, phone):
    """adbd before Android 7 refuses "shell,v2" (the proxy answers CLSE as it would): liteship falls back to
    shell v1 once per connection and still reports the exit status and stderr apart."""
    phone.faults.refuse_services = (b"shell,v2",)
    started = time.monotonic()
    result = android.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert android.run(["cat"], stdin=b"line 1\n").stdout == "line 1\n"
    assert time.monotonic() - started < 15  # one wait for the refused v2 stream, not one per command
    assert sorted(p.name for p in on_phone(phone, "/data/local/tmp").iterdir()) == []


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


def test_command_timing_out_is_killed_and_the_next_call_reconnects(android, phone):
    # adbd shares this machine's process table: the late file's name is this run's own, so `ps` counts no other
    # test's command
    late = f"/data/local/tmp/late-{secrets.token_hex(4)}"
    with pytest.raises(DeviceError, match=rf"`sleep 3; touch {late}` timed out after 0.5s"):
        android.shell(f"sleep 3; touch {late}", timeout=0.5)
    assert android.run(["echo", "back"]).stdout == "back\n"  # a fresh connection
    time.sleep(3.5)
    # adbd hung up on the command with its connection (SIGHUP): it never finished
    assert not on_phone(phone, late).exists()
    assert android.run(["sh", "-c", f"ps -o args | grep -c '[t]ouch {late}'"], check=False).stdout.strip() == "0"


def test_slow_link_hits_the_timeout(android, phone):
    android.run(["true"])
    phone.faults.delay_s = 1.0  # now every answer from the phone is late
    with pytest.raises(DeviceError, match="timed out after 0.3s"):
        android.run(["true"], timeout=0.3)
    phone.faults.delay_s = 0.0
    assert android.run(["echo", "back"]).stdout == "back\n"


# --- probe, push, bench through the generic device code -------------------------------------------------------


def test_probe_reports_the_phone_not_the_host(tmp_path, adb_key, real_adbd):
    """Every fact comes from the device: a three-cluster CPU tree in its /sys, 7.5 GiB in its /proc/meminfo, the
    size of its /data, its properties, its tools (mksh, busybox, no python3)."""
    from liteship.device.probe import format_probe, probe

    clusters = {0: 1_800_000, 1: 1_800_000, 2: 1_800_000, 3: 1_800_000, 4: 2_350_000, 5: 2_350_000,
                6: 2_350_000, 7: 2_850_000}
    sysfs = make_sysfs(tmp_path / "sys", clusters, {"skin": 31000})
    phone = real_adbd(sysfs=sysfs, meminfo=MEMINFO, props=PROPS, data_size="24m", keys=[public(adb_key)])
    with connect(phone, adb_key) as target:
        facts = probe(target)
        # run_bench.sh under the phone's mksh pins to the cores the probe called big (CPUs 4-7 may not exist on
        # this machine, so taskset may fail: the pick is what is compared).
        target.run(["mkdir", "-p", WORKDIR])
        target.put(run_bench_script(), f"{WORKDIR}/run_bench.sh")
        target.run(run_bench_argv(f"{WORKDIR}/run_bench.sh", f"{WORKDIR}/r.txt", ["true"], cores="big"))
        picked = parse_run_bench_result(target.run(["cat", f"{WORKDIR}/r.txt"]).stdout)["cpus"]
    assert facts["cpu"]["big_cores"] == sorted(picked) == [4, 5, 6, 7] and facts["cpu"]["fastest_cores"] == [7]
    assert "big cores 4-7, fastest 7" in format_probe(facts)
    assert "7.5 GiB total, 3.0 GiB available" in format_probe(facts)  # the phone's /proc/meminfo
    assert facts["model"] == "Google Pixel 7" and facts["soc"] == "gs201" and facts["abi"] == "arm64-v8a"
    assert facts["os"] == "Android 14 (SDK 34)"
    assert facts["cpu"]["cores"] == 8 and facts["cpu"]["max_khz"] == list(clusters.values())
    assert facts["memory"] == {"total_bytes": 7833600 * 1024, "available_bytes": 3145728 * 1024}
    assert facts["storage"]["total_bytes"] == 24 * 1024 * 1024 and facts["storage"]["path"] == WORKDIR
    assert facts["python"] is None and "python3" not in facts["tools"]
    assert facts["tools"]["sh"] == "/system/bin/sh" and facts["tools"]["busybox"] == "/system/bin/busybox"
    assert facts["thermal"] == [{"zone": 0, "type": "skin", "temp_c": 31.0}]
    assert "8 cores" in format_probe(facts)


def bundle_on_phone(phone, name: str) -> Path:
    return on_phone(phone, f"{WORKDIR}/bundles/{name}")


def partials(phone) -> list[str]:
    bundles = on_phone(phone, f"{WORKDIR}/bundles")
    return sorted(p.name for p in bundles.iterdir() if p.name.startswith(".")) if bundles.exists() else []


def test_push_installs_a_verified_bundle(android, phone, tiny_bundle):
    from liteship.device.push import push_bundle

    result = push_bundle(android, tiny_bundle)
    installed = bundle_on_phone(phone, tiny_bundle.name)
    assert result.remote_path == f"{WORKDIR}/bundles/{tiny_bundle.name}"
    for f in tiny_bundle.rglob("*"):
        if f.is_file():
            copy = installed / f.relative_to(tiny_bundle)
            assert copy.read_bytes() == f.read_bytes()
            assert copy.stat().st_uid == 2000  # written by the shell user, as on a phone
    stamps = {p: p.stat().st_mtime_ns for p in installed.rglob("*")}
    again = push_bundle(android, tiny_bundle)
    assert again.unchanged and again.sent == [] and again.bytes_sent == 0  # same hashes on the phone
    assert {p: p.stat().st_mtime_ns for p in installed.rglob("*")} == stamps
    assert partials(phone) == []


def test_put_reports_bytes_as_adb_sends_them(android, phone, tmp_path):
    """adb's sync protocol sends DATA packets of at most 64 KiB: progress comes per packet, not per file."""
    data = os.urandom(1_000_000)
    (tmp_path / "blob").write_bytes(data)
    counts = []
    android.put(tmp_path / "blob", f"{WORKDIR}/blob", progress=counts.append)
    assert counts == sorted(counts) and counts[-1] == len(data) and len(counts) >= len(data) // 65536
    assert on_phone(phone, f"{WORKDIR}/blob").read_bytes() == data


def test_connection_dropped_mid_push_leaves_no_partial_bundle(android, phone, tiny_bundle):
    from liteship.device.push import push_bundle

    phone.faults.cut_after_marker, phone.faults.cut_after_upload_bytes = b"DATA", 1  # the first file's data
    lost = r"connection lost during push to .*/\.tiny-classifier\.partial-.*closed the connection"
    with pytest.raises(DeviceError, match=lost):
        push_bundle(android, tiny_bundle)
    assert phone.stats.cuts == 1
    assert not bundle_on_phone(phone, tiny_bundle.name).exists()
    assert partials(phone) == []  # push's clean-up reconnected and removed the partial folder
    push_bundle(android, tiny_bundle)
    assert bundle_on_phone(phone, tiny_bundle.name).is_dir()


def test_corrupted_file_fails_verification_and_is_rolled_back(android, phone, tiny_bundle):
    """A file's bytes change on the way (the proxy flips one and fixes the message checksum): the device-side
    sha256 check catches it and the partial folder goes."""
    from liteship.device.push import push_bundle

    phone.faults.corrupt_files = 1
    with pytest.raises(DeviceError, match="failed its sha256 check on the device"):
        push_bundle(android, tiny_bundle)
    assert phone.stats.corrupted == 1
    assert not bundle_on_phone(phone, tiny_bundle.name).exists() and partials(phone) == []
    push_bundle(android, tiny_bundle)
    assert bundle_on_phone(phone, tiny_bundle.name).is_dir()


def fill(phone, leave_bytes: int) -> None:
    """Fill the phone's /data (a tmpfs) until at most ``leave_bytes`` are free."""
    st = os.statvfs(on_phone(phone, "/data"))
    free = st.f_bavail * st.f_frsize
    with open(on_phone(phone, "/data/filler"), "ab") as f:
        f.write(b"\0" * max(0, free - leave_bytes))


def test_full_data_is_refused_before_sending(android, phone, tiny_bundle):
    from liteship.device.push import push_bundle

    android.run(["mkdir", "-p", f"{WORKDIR}/bundles"])
    fill(phone, 8192)
    with pytest.raises(DeviceError, match=r"not enough free space in .*/bundles.*[kM]B free"):
        push_bundle(android, tiny_bundle)
    assert not bundle_on_phone(phone, tiny_bundle.name).exists() and partials(phone) == []


def test_data_filling_up_during_the_push_is_a_clear_error(android, phone, tiny_bundle, monkeypatch):
    """The space check passed, then /data filled up under the push: the write itself fails (ENOSPC from the
    real adbd) and the partial folder is removed."""
    import liteship.device.push as push
    from liteship.device.push import push_bundle

    real_parse = push._parse_df_free

    def fill_after_the_check(line):
        free = real_parse(line)
        fill(phone, 0)
        return free

    monkeypatch.setattr(push, "_parse_df_free", fill_after_the_check)
    with pytest.raises(DeviceError, match="No space left on device; the device is full"):
        push_bundle(android, tiny_bundle)
    on_phone(phone, "/data/filler").unlink()
    assert not bundle_on_phone(phone, tiny_bundle.name).exists() and partials(phone) == []


@pytest.fixture
def fake_benchmark_model(tmp_path) -> Path:
    binary = tmp_path / "benchmark_model"
    binary.write_text(MKSH_FAKE)
    binary.chmod(0o755)
    return binary


def test_run_bench_sh_under_the_phones_mksh(android, phone):
    """run_bench.sh on the phone as liteship runs it (`sh run_bench.sh`, sh being mksh there), pinned to the big
    core of the phone's /sys, sampling the command's peak memory."""
    script = f"{WORKDIR}/run_bench.sh"
    android.run(["mkdir", "-p", f"{WORKDIR}/results"])
    android.put(run_bench_script(), script)
    assert android.run(["sh", "-c", 'echo "$KSH_VERSION"']).stdout.startswith("@(#)MIRBSD KSH")
    result_path = f"{WORKDIR}/results/r1.txt"
    command = ["sh", "-c", "x=$(head -c 3000000 /dev/zero | tr '\\0' a); sleep 0.5; echo ${#x}"]
    argv = run_bench_argv(script, result_path, command, output=f"{WORKDIR}/results/r1.log", cores="big",
                          cool_below_c=90, cool_max_wait_s=5, sample_interval_s=0.05)
    android.run(argv, timeout=60)
    r = parse_run_bench_result(on_phone(phone, result_path).read_text())
    assert r["status"] == 0 and android.run(["cat", f"{WORKDIR}/results/r1.log"]).stdout == "3000000\n"
    if len(ALLOWED) > 1:
        assert r["pinned"] and r["cpus"] == [ALLOWED[-1]]
    assert r["thermal_before"][0] == {"zone": "thermal_zone0", "type": "cpu-0-0-usr", "temp_c": 38.0}
    assert r["peak_rss_bytes"] > 3_000_000  # the shell held a 3 MB string


def test_benchmark_model_runner_end_to_end(phone, adb_key, tiny_bundle, fake_benchmark_model, tmp_path, monkeypatch):
    """The runner a phone without python uses: bundle pushed, benchmark_model pushed and cached by hash, run
    under run_bench.sh pinned to the big core, its log parsed."""
    from liteship.device.bench import BenchSettings, bench_targets

    monkeypatch.setenv("LITESHIP_CACHE", str(tmp_path / "cache"))
    settings = BenchSettings(runs=5, warmup=1, cores="big", cool_below_c=90, benchmark_binary=str(fake_benchmark_model),
                             op_profiling=True, benchmark_args=("--use_caching=true",))
    options = {"adb_key": str(adb_key), "auth_timeout_s": 2}
    [entry] = bench_targets(tiny_bundle, [phone.spec], settings, target_options=options)["results"]
    assert entry["ok"], entry["error"]
    assert entry["runner"] == "benchmark_model" and entry["device"]["python"] is None
    bench = entry["bench"]
    assert bench["runs"] == 5 and bench["latency_ms"]["mean"] > 0
    assert bench["top_ops"][0]["op"] == "SHA256" and bench["top_ops"][0]["avg_ms"] > 0
    assert "--report_peak_memory_footprint=true" in entry["run"]["command"]
    assert entry["run"]["status"] == 0 and "peak_rss_bytes" not in entry["run"]  # one peak, in the bench
    assert bench["peak_rss_bytes"] > 0  # run_bench.sh's sampled VmHWM: this stand-in prints no memory lines
    assert bench["model_rss_bytes"] is None  # nor a footprint delta, so the model's share is unknown, not invented
    if len(ALLOWED) > 1:
        assert entry["run"]["pinned"] and entry["run"]["cpus"] == [ALLOWED[-1]]
    [cached] = on_phone(phone, f"{WORKDIR}/bin").glob("benchmark_model-*")
    assert cached.read_bytes() == fake_benchmark_model.read_bytes()


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


def test_bench_targets_on_two_phones_one_refusing(phone, adb_key, tiny_bundle, fake_benchmark_model, tmp_path,
                                                 monkeypatch, real_adbd):
    """The orchestration over two real phones at once: the trusting phone gives a full result; the one that never
    answers its prompt gives an error entry, and neither loses the other's result."""
    from liteship.device.bench import BenchSettings, bench_targets

    monkeypatch.setenv("LITESHIP_CACHE", str(tmp_path / "cache"))
    refusing = real_adbd()
    settings = BenchSettings(runs=5, warmup=1, cores="big", benchmark_binary=str(fake_benchmark_model))
    options = {"adb_key": str(adb_key), "auth_timeout_s": 1}
    doc = bench_targets(tiny_bundle, [phone.spec, refusing.spec], settings, target_options=options)
    good, bad = doc["results"]
    assert good["ok"], good["error"]
    assert good["kind"] == "android" and good["device"]["kind"] == "android"
    assert good["bench"]["runs"] == 5 and good["run"]["status"] == 0
    assert not bad["ok"] and "Allow USB debugging" in bad["error"]
