"""android_bench/run_bench.sh run directly on this Linux host, under every POSIX shell installed here.

mksh is Android's /system/bin/sh and busybox ash is what small boards have; dash is Debian's sh. The cpufreq and
thermal files come from a sysfs tree made per test (LITESHIP_SYSFS), with CPU ids this process may really run on,
so taskset pins for real. The through-adb run is in test_android.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from liteship.device.run_bench import parse_run_bench_result, run_bench_argv, run_bench_script
from tests.device.real_adbd import make_sysfs

SCRIPT = run_bench_script()
SHELLS = [s for s in (["dash"], ["mksh"], ["busybox", "sh"], ["bash", "--posix"]) if shutil.which(s[0])]
ALLOWED = sorted(os.sched_getaffinity(0))
# The fastest CPU is the last one this process may use; on a 1-CPU machine there is no slower cluster.
BIG = ALLOWED[-1]


@pytest.fixture(params=SHELLS, ids=lambda s: s[0])
def shell(request):
    return request.param


def run(shell, tmp_path, command, *, sysfs=None, **options):
    result = tmp_path / "result.txt"
    argv = run_bench_argv(str(SCRIPT), str(result), command, **options)
    env = dict(os.environ, LITESHIP_SYSFS=str(sysfs or tmp_path / "no-sysfs"))
    proc = subprocess.run(shell + argv[1:], env=env, capture_output=True, text=True, timeout=60)
    return proc, result


def test_pins_to_the_big_cores_and_records_the_device_state(shell, tmp_path):
    sysfs = make_sysfs(tmp_path / "sys", {c: 1_800_000 for c in ALLOWED[:-1]} | {BIG: 2_400_000},
                       {"cpu-big": 41000, "battery": 30})
    proc, result = run(shell, tmp_path, ["sh", "-c", "grep Cpus_allowed_list /proc/self/status; echo oops >&2; exit 7"],
                       sysfs=sysfs, cores="big", cool_below_c=45)
    assert proc.returncode == 0, proc.stderr
    r = parse_run_bench_result(result.read_text())
    assert r["status"] == 7
    output = Path(r["output"]).read_text()
    assert "oops" in output  # stdout and stderr both land in the output file
    if len(ALLOWED) > 1:
        assert r["cpus"] == [BIG] and r["cpu_mask"] == hex(1 << BIG) and r["pinned"]
        assert f"Cpus_allowed_list:\t{BIG}\n" in output
    assert r["thermal_before"] == [{"zone": "thermal_zone0", "type": "cpu-big", "temp_c": 41.0},
                                   {"zone": "thermal_zone1", "type": "battery", "temp_c": 30.0}]  # whole degrees scaled
    assert {f["cpu"]: f["max_khz"] for f in r["freq_after"]}[f"cpu{BIG}"] == 2_400_000
    assert r["cooldown_waited_s"] == 0 and not r["cooldown_timed_out"]
    assert [p.name for p in tmp_path.iterdir() if ".tmp." in p.name] == []  # written via tmp + mv


def test_peak_memory_is_sampled_while_the_command_runs(shell, tmp_path):
    hold = "b = bytearray(80 * 1024 * 1024); import time; time.sleep(1.0)"
    proc, result = run(shell, tmp_path, [sys.executable, "-c", hold], sample_interval_s=0.05)
    assert proc.returncode == 0, proc.stderr
    r = parse_run_bench_result(result.read_text())
    assert r["status"] == 0
    # 80 MiB were touched (bytearray zero-fills) and held for 1 s, sampled every 0.05 s (slack for a busy machine).
    assert r["peak_rss_bytes"] >= 80 * 1024 * 1024
    assert r["memory_samples"] >= 2


def test_cool_down_gives_up_after_the_max_wait(shell, tmp_path):
    sysfs = make_sysfs(tmp_path / "sys", {}, {"cpu": 71500, "unused": -273000})
    proc, result = run(shell, tmp_path, ["true"], sysfs=sysfs, cool_below_c=50, cool_max_wait_s=1)
    assert proc.returncode == 0, proc.stderr
    r = parse_run_bench_result(result.read_text())
    assert r["cooldown_timed_out"] and r["cooldown_waited_s"] == 1
    assert r["thermal_before"][0]["temp_c"] == 71.5


def test_without_cpufreq_it_runs_unpinned_and_says_why(shell, tmp_path):
    proc, result = run(shell, tmp_path, ["echo", "a b", "$HOME"], cores="big", cool_below_c=40)
    r = parse_run_bench_result(result.read_text())
    assert r["status"] == 0 and not r["pinned"] and r["cpus"] is None
    assert r["pin_note"] == f"no cpu_capacity or cpufreq in {tmp_path}/no-sysfs/devices/system/cpu; not pinned"
    # Regression: --cool-below with no thermal zone to read ran at once and said nothing.
    assert r["cool_note"] == f"no thermal zone to read in {tmp_path}/no-sysfs/class/thermal; did not wait"
    assert r["cooldown_waited_s"] == 0
    assert Path(r["output"]).read_text() == "a b $HOME\n"  # arguments pass through unexpanded


def test_a_readable_zone_leaves_no_cool_note(shell, tmp_path):
    sysfs = make_sysfs(tmp_path / "sys", {}, {"skin": 30000})
    proc, result = run(shell, tmp_path, ["true"], sysfs=sysfs, cool_below_c=40)
    assert parse_run_bench_result(result.read_text())["cool_note"] is None


# One "big cores" rule (run_bench.sh's pick_cpus), which the probe runs too. Layouts: (cpufreq max kHz per CPU,
# cpu_capacity per CPU or None, the big cores, the fastest cores).
LAYOUTS = {
    # a Raspberry Pi 4: one cluster, every core is big and fastest
    "1-cluster": ({0: 1_800_000, 1: 1_800_000, 2: 1_800_000, 3: 1_800_000}, None, [0, 1, 2, 3], [0, 1, 2, 3]),
    # big.LITTLE 4+4 (e.g. Exynos 5422): the fast cluster
    "2-cluster": ({0: 1_400_000, 1: 1_400_000, 2: 1_400_000, 3: 1_400_000,
                   4: 2_000_000, 5: 2_000_000, 6: 2_000_000, 7: 2_000_000}, None, [4, 5, 6, 7], [4, 5, 6, 7]),
    # a Pixel 8's Tensor G3, 4 little + 4 mid + 1 prime: big is everything but the little cores
    "3-cluster": ({0: 1_704_000, 1: 1_704_000, 2: 1_704_000, 3: 1_704_000, 4: 2_367_000, 5: 2_367_000,
                   6: 2_367_000, 7: 2_367_000, 8: 2_914_000}, None, [4, 5, 6, 7, 8], [8]),
    # 6 little A55 + 2 big A75 at the same 2.0 GHz (Helio-style): only cpu_capacity tells them apart
    "capacity": ({n: 2_000_000 for n in range(8)}, {n: 377 if n < 6 else 1024 for n in range(8)}, [6, 7], [6, 7]),
    # a device tree without capacity-dmips-mhz: the kernel says 1024 everywhere, so cpufreq decides
    "flat-capacity": ({0: 1_800_000, 1: 1_800_000, 2: 2_400_000, 3: 2_400_000}, {n: 1024 for n in range(4)},
                      [2, 3], [2, 3]),
    # 4 + 3 + 1 with capacities (Snapdragon 888-style): cpu_capacity orders the tiers
    "3-cluster-capacity": ({n: 1_800_000 if n < 4 else 2_420_000 if n < 7 else 2_840_000 for n in range(8)},
                           {n: 250 if n < 4 else 740 if n < 7 else 1024 for n in range(8)}, [4, 5, 6, 7], [7]),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_probe_and_run_bench_pick_the_same_cores(shell, tmp_path, layout):
    """Regression: the probe called only the top-frequency cluster "big" while --cores big pinned to everything
    but the slowest one, so on a three-cluster phone they named different cores."""
    from liteship.device.probe import format_probe, parse_probe_output, probe_script, summarize

    max_khz, capacity, big, fastest = LAYOUTS[layout]
    sysfs = make_sysfs(tmp_path / "sys", max_khz, {"skin": 30000}, capacity=capacity)
    env = dict(os.environ, LITESHIP_SYSFS=str(sysfs))
    out = subprocess.run(shell + ["-c", probe_script(str(tmp_path / "wd"), "no-python")], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    facts = summarize(parse_probe_output(out), target="t", kind="ssh", workdir=str(tmp_path / "wd"))
    assert facts["cpu"]["big_cores"] == big and facts["cpu"]["fastest_cores"] == fastest
    assert facts["cpu"]["capacity"] == [capacity[n] if capacity else None for n in sorted(max_khz)]
    for policy, expected in (("big", big), ("fastest", fastest)):
        # The CPU ids may not exist on this machine, so taskset may fail: the pick is what is compared.
        proc, result = run(shell, tmp_path, ["true"], sysfs=sysfs, cores=policy)
        assert proc.returncode == 0, proc.stderr
        assert sorted(parse_run_bench_result(result.read_text())["cpus"]) == expected
    cpu_line = next(line for line in format_probe(facts).splitlines() if line.startswith("CPU"))
    assert ("big cores" in cpu_line) == (len(big) < len(max_khz))


@pytest.mark.parametrize("args, message", [
    (["--cores", "little", "--", "true"], "--cores must be all, big or fastest"),
    (["--cool-below", "4x", "--", "true"], "whole degrees"),
    ([], "no command given"),
])
def test_bad_arguments_exit_2_without_a_result(tmp_path, args, message):
    result = tmp_path / "r.txt"
    proc = subprocess.run(["sh", str(SCRIPT), "--result", str(result), *args], capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr
    assert not result.exists()


def test_the_probe_reads_the_same_sysfs_override(shell, tmp_path):
    """Regression: the probe read /sys whatever LITESHIP_SYSFS said, so on a board with sysfs elsewhere (and in
    the fixture phone) it reported other CPUs and zones than run_bench.sh pinned and read."""
    from liteship.device.probe import parse_probe_output, probe_script, summarize

    sysfs = make_sysfs(tmp_path / "sys", {0: 1_800_000, 1: 1_800_000, 2: 2_400_000}, {"skin": 33000})
    env = dict(os.environ, LITESHIP_SYSFS=str(sysfs))
    out = subprocess.run(shell + ["-c", probe_script(str(tmp_path / "wd"), "no-python")], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    facts = summarize(parse_probe_output(out), target="t", kind="ssh", workdir=str(tmp_path / "wd"))
    assert facts["cpu"]["max_khz"] == [1_800_000, 1_800_000, 2_400_000]
    assert facts["thermal"] == [{"zone": 0, "type": "skin", "temp_c": 33.0}]
    proc, result = run(shell, tmp_path, ["true"], sysfs=sysfs, cores="big")
    assert proc.returncode == 0, proc.stderr
    assert parse_run_bench_result(result.read_text())["thermal_before"][0]["type"] == "skin"
