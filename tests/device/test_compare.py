"""`liteship compare`: on synthetic per-run latencies with a known difference it flags it; with none it raises no
false alarm over many seeds (a bounded rate); the threshold and the interval each have to agree."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from liteship.device.compare import compare_cells, compare_files, pair_cells


def cell(samples, *, variant="m", device="local", size=1_000_000, tok_s=None) -> dict:
    bench = {"latency_ms": {"samples": [float(x) for x in samples]}, "init_ms": 50.0, "peak_rss_bytes": 2**26}
    if tok_s is not None:
        bench["generation"] = {"decode_tok_s": tok_s}
    return {"variant": variant, "device": device, "ok": True, "size_bytes": size,
            "entry": {"target": device, "ok": True, "bench": bench}}


def latencies(rng, n, scale=1.0):
    """Right-skewed like real timings: lognormal around 10 ms with an occasional 3x outlier (a preempted run)."""
    x = rng.lognormal(np.log(10.0), 0.1, n)
    x[rng.random(n) < 0.03] *= 3
    return x * scale


def verdicts(changes) -> dict:
    return {c.metric: c.verdict for c in changes}


def test_a_known_slowdown_is_flagged():
    """+20% on every run, 100 runs a side: the median catches it on every seed; p90, which sits where the
    distribution is sparse, on nearly every one."""
    p90_caught = covered = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        changes = compare_cells(cell(latencies(rng, 100)), cell(latencies(rng, 100, 1.2)), "m @ local",
                                threshold_pct=5, rng=rng, resamples=1000)
        v = verdicts(changes)
        assert v["p50_ms"] == "regression", (seed, changes)
        p90_caught += v["p90_ms"] == "regression"
        assert v["mean_ms"] == "not judged"  # shown only: see device/compare.py
        p50 = next(c for c in changes if c.metric == "p50_ms")
        covered += p50.low_pct <= 20.0 <= p50.high_pct
    assert p90_caught >= 36
    assert covered >= 34  # a 95% interval holds the true +20% on ~38 of 40 seeds


def test_no_false_alarm_over_many_seeds():
    """Same distribution on both sides, 300 seeds x the 2 judged latency metrics. A 95% interval excludes zero
    upwards about 2.5% of the time by chance; the threshold must keep false alarms at or below that. With no
    threshold the interval alone decides: allow twice the nominal rate for the bootstrap's small-sample
    undercoverage."""
    alarms = {5.0: 0, 0.0: 0}
    trials = 0
    for seed in range(300):
        rng = np.random.default_rng(1000 + seed)
        old, new = cell(latencies(rng, 60)), cell(latencies(rng, 60))
        for threshold in alarms:
            changes = compare_cells(old, new, "m @ local", threshold_pct=threshold, rng=rng, resamples=1000)
            alarms[threshold] += sum(c.verdict == "regression" for c in changes if c.metric.endswith("_ms"))
        trials += 2
    assert alarms[5.0] / trials <= 0.025, alarms
    assert alarms[0.0] / trials <= 0.05, alarms


def test_the_threshold_and_the_interval_must_both_agree():
    rng = np.random.default_rng(7)
    old = rng.normal(10.0, 0.05, 3000)
    new = rng.normal(10.2, 0.05, 3000)  # +2%: certainly real with 3000 runs, but below a 5% threshold
    changes = compare_cells(cell(old), cell(new), "m", threshold_pct=5, rng=rng, resamples=500)
    p50 = next(c for c in changes if c.metric == "p50_ms")
    assert p50.low_pct > 0 and p50.verdict == "no change"
    assert verdicts(compare_cells(cell(old), cell(new), "m", threshold_pct=1, rng=rng, resamples=500))["p50_ms"] \
        == "regression"
    # A large but noisy change: past the threshold, yet the interval includes zero with 5 runs a side.
    noisy_old, noisy_new = [5, 30, 6, 28, 7], [6, 31, 7, 29, 9]
    v = compare_cells(cell(noisy_old), cell(noisy_new), "m", threshold_pct=5, rng=rng, resamples=1000)
    p50 = next(c for c in v if c.metric == "p50_ms")
    assert p50.change_pct > 5 and p50.low_pct < 0 and p50.verdict == "no change"


def test_improvements_sizes_and_single_values():
    rng = np.random.default_rng(3)
    base = latencies(rng, 100)
    v = verdicts(compare_cells(cell(base, size=1_000_000, tok_s=30.0),
                               cell(base * 0.7, size=1_200_000, tok_s=20.0), "m", threshold_pct=5, rng=rng))
    assert v["p90_ms"] == v["p50_ms"] == "improvement"
    assert v["file_size_mb"] == "regression"  # exact: +20% is +20%
    assert v["decode_tok_s"] == "not judged" and v["init_ms"] == "not judged"  # one value per run: no interval


def test_pairing_by_variant_and_device_or_by_device_after_a_rename():
    a = [cell([1, 2], variant="x", device="local"), cell([1, 2], variant="x", device="adb:P")]
    b = [cell([1, 2], variant="x", device="local"), dict(cell([1, 2], variant="x", device="ssh:b"))]
    assert [n for n, _, _ in pair_cells(a, b)] == ["x @ local"]
    renamed = [cell([1, 2], variant="y", device="local")]
    assert [n for n, _, _ in pair_cells(a, renamed)] == ["y @ local"]
    failed = [dict(cell([1, 2], variant="x", device="local"), ok=False)]
    assert pair_cells(a, failed) == []


def bench_doc(samples, name="m") -> dict:
    entry = cell(samples)["entry"]
    return {"schema": "liteship.device-bench/1", "bundle": {"name": name, "path": name,
                                                             "model_size_bytes": 1_000_000}, "results": [entry]}


def test_cli_exit_codes(tmp_path):
    rng = np.random.default_rng(11)
    old, same, slow = tmp_path / "old.json", tmp_path / "same.json", tmp_path / "slow.json"
    old.write_text(json.dumps(bench_doc(latencies(rng, 80))))
    same.write_text(json.dumps(bench_doc(latencies(rng, 80))))
    slow.write_text(json.dumps(bench_doc(latencies(rng, 80, 1.5))))

    def run(*args):
        return subprocess.run([sys.executable, "-c", "from liteship.cli import main; main()", "compare", *args],
                              capture_output=True, text=True, timeout=120)

    res = run(str(old), str(same))
    assert res.returncode == 0, res.stderr
    assert "REGRESSION" not in res.stdout and "p90_ms" in res.stdout
    res = run(str(old), str(slow))
    assert res.returncode == 1 and "REGRESSION" in res.stdout
    assert res.stderr.startswith("error: 2 regression(s): m @ local p50_ms +")
    res = run(str(old), str(slow), "--json")
    assert {c["metric"]: c["verdict"] for c in json.loads(res.stdout)}["p90_ms"] == "regression"
    other = tmp_path / "other.json"
    doc = bench_doc([1, 2, 3])
    doc["results"][0]["target"] = "adb:P"
    other.write_text(json.dumps(doc))
    res = run(str(old), str(other))
    assert res.returncode == 1 and "share no variant x device cell" in res.stderr
    # Reproducible: the same seed gives the same intervals.
    assert compare_files(old, slow, seed=4)[0].low_pct == compare_files(old, slow, seed=4)[0].low_pct


@pytest.mark.parametrize("bad", ["{", json.dumps({"schema": "x/1"})])
def test_cli_bad_input(tmp_path, bad):
    path = tmp_path / "bad.json"
    path.write_text(bad)
    res = subprocess.run([sys.executable, "-c", "from liteship.cli import main; main()", "compare", str(path),
                          str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and res.stderr.startswith(f"error: {path}: ") and res.stderr.count("\n") == 1
