"""`liteship bench --duration`: inferences back to back for a set time, throughput and temperature per window,
on this host and on the loopback SSH board through the pushed runtime zipapp; the report plots them."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from liteship.device.bench import BenchSettings, bench_targets
from liteship.errors import DeviceError, LiteshipError
from liteship.runtime.sustained import hottest_zone_c, parse_duration, sustained_runs


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("10m", 600), ("1.5h", 5400), ("0.5s", 0.5)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-3m", "10 minutes", "1d", "m"])
def test_parse_duration_rejects(text):
    with pytest.raises(LiteshipError, match="--duration"):
        parse_duration(text)


@pytest.fixture
def sysfs(tmp_path, monkeypatch):
    """Thermal zones where run_bench.sh would read them: the host has none, a phone a dozen (millidegrees)."""
    for i, temp in enumerate(("41000", "52500", "oops")):
        zone = tmp_path / "class" / "thermal" / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "temp").write_text(temp + "\n")
    monkeypatch.setenv("LITESHIP_SYSFS", str(tmp_path))
    return tmp_path


def test_windows_record_throughput_and_the_hottest_zone(sysfs):
    assert hottest_zone_c() == 52.5  # the unreadable zone is skipped
    result = sustained_runs(lambda: time.sleep(0.002), 0.6, window_s=0.2)
    points = result["points"]
    assert 3 <= len(points) <= 4 and points[-1]["t_s"] == pytest.approx(0.6, abs=0.05)
    assert all(p["max_temp_c"] == 52.5 for p in points)
    assert all(p["runs"] > 0 and 0 < p["runs_per_s"] <= 500 for p in points)  # a 2 ms run: at most 500/s
    assert all(p["p50_ms"] >= 2.0 for p in points)


def test_a_slowing_device_shows_falling_throughput(sysfs):
    started = time.perf_counter()

    def throttled():  # gets slower as it runs, like a phone heating up
        time.sleep(0.001 + 0.02 * (time.perf_counter() - started))

    result = sustained_runs(throttled, 0.8, window_s=0.2)
    rates = [p["runs_per_s"] for p in result["points"]]
    assert rates[0] > rates[-1] and result["throughput_change_pct"] < -20


def test_bench_duration_locally_and_on_the_ssh_board(ssh_env, tiny_bundle, remote_python, tmp_path):
    settings = BenchSettings(runs=3, warmup=1, duration_s=1.0, python=remote_python, workdir=str(tmp_path / "wd"))
    doc = bench_targets(tiny_bundle, ["local", "ssh:board"], settings)
    for entry in doc["results"]:
        assert entry["ok"], entry["error"]
        sustained = entry["bench"]["sustained"]
        assert sustained["duration_s"] == 1.0 and len(sustained["points"]) >= 1
        assert sum(p["runs"] for p in sustained["points"]) > 10  # a tiny model runs thousands of times a second
    assert "--duration 1.0" in doc["results"][1]["run"]["command"]  # through the zipapp on the board

    with pytest.raises(DeviceError, match="--duration needs liteship's Python runner"):
        BenchSettings(duration_s=5, benchmark_binary=sys.executable)


def test_cli_duration_then_report(tiny_bundle, tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "-c", "from liteship.cli import main; main()", "bench", str(tiny_bundle),
                          "--runs", "3", "--duration", "1s", "--json", str(out)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["results"][0]["bench"]["sustained"]["points"]
    html = tmp_path / "r.html"
    res = subprocess.run([sys.executable, "-c", "from liteship.cli import main; main()", "report", str(out), "--html",
                          str(html)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "<h2>Sustained runs</h2>" in html.read_text()
    res = subprocess.run([sys.executable, "-c", "from liteship.cli import main; main()", "bench", str(tiny_bundle),
                          "--duration", "soon"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and res.stderr.strip() == "error: --duration 'soon': give a positive time such as " \
                                                        "90s, 10m or 1h"
