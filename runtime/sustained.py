"""Sustained runs: inferences back to back for a fixed time, throughput and temperature per time window.

Phones throttle within minutes: a 50-run benchmark shows the cold device, this shows what a user gets after a
while. Runs where the bundle runs (the device's Python), as the ``sustained`` block of ``liteship.bench/1``
(``liteship bench --duration 10m``). Temperatures come from the thermal zones under $LITESHIP_SYSFS (default
/sys), the same place android_bench/run_bench.sh reads them; where they cannot be read they are None.
"""

from __future__ import annotations

import glob
import os
import re
import time

from liteship.errors import RuntimeLiteshipError

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1.5h' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise RuntimeLiteshipError(f"--duration {text!r}: give a positive time such as 90s, 10m or 1h")
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


def hottest_zone_c() -> float | None:
    """The highest thermal zone temperature now, in °C (zones report millidegrees; a few boards degrees)."""
    sysfs = os.environ.get("LITESHIP_SYSFS", "/sys")
    temps = []
    for path in glob.glob(os.path.join(sysfs, "class", "thermal", "thermal_zone*", "temp")):
        try:
            with open(path) as fh:
                value = float(fh.read().strip())
        except (OSError, ValueError):
            continue
        temps.append(value / 1000.0 if abs(value) > 1000 else value)
    return max(temps) if temps else None


def sustained_runs(run, duration_s: float, *, window_s: float | None = None, clock=time.perf_counter) -> dict:
    """Call ``run()`` back to back for ``duration_s``; one point per ``window_s`` (default: 60 points):
    t_s (window end since the start), runs_per_s, p50_ms of the window, max_temp_c at its end."""
    window = window_s or max(1.0, duration_s / 60)
    points, start = [], clock()
    end = start + duration_s
    while clock() < end:
        window_start, times = clock(), []
        window_end = min(end, window_start + window)
        while clock() < window_end:
            t0 = clock()
            run()
            times.append((clock() - t0) * 1e3)
        elapsed = clock() - window_start
        times.sort()
        points.append({"t_s": round(clock() - start, 3), "runs": len(times),
                       "runs_per_s": round(len(times) / elapsed, 3) if elapsed > 0 else None,
                       "p50_ms": round(times[len(times) // 2], 4) if times else None,
                       "max_temp_c": hottest_zone_c()})
    first, last = points[0]["runs_per_s"] or 0, points[-1]["runs_per_s"] or 0
    return {"duration_s": duration_s, "window_s": window, "points": points,
            "throughput_change_pct": round(100.0 * (last / first - 1.0), 2) if first else None}
