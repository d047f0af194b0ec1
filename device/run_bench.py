"""android_bench/run_bench.sh from the host, for every target kind: where the packaged script is, the argv that runs
a command under it, and its ``key=value`` result file as a typed dict."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from liteship.errors import DeviceError


def run_bench_script() -> Path:
    """The packaged ``run_bench.sh`` (push it to the device, run it with ``sh``)."""
    from importlib.resources import files

    return Path(str(files("liteship.android_bench").joinpath("run_bench.sh")))


def run_bench_argv(
    script: str,
    result: str,
    command: Sequence[str],
    *,
    output: str | None = None,
    workdir: str | None = None,
    cores: str = "all",
    cool_below_c: int | None = None,
    cool_max_wait_s: int = 120,
    sample_interval_s: float = 0.1,
) -> list[str]:
    """The argv that runs ``command`` under run_bench.sh on the device (give it to ``Target.run``)."""
    argv = ["sh", script, "--result", result, "--cores", cores, "--cool-max-wait", str(int(cool_max_wait_s))]
    argv += ["--sample-interval", f"{sample_interval_s:g}"]
    if output:
        argv += ["--output", output]
    if workdir:
        argv += ["--workdir", workdir]
    if cool_below_c is not None:
        argv += ["--cool-below", str(int(cool_below_c))]
    return argv + ["--", *command]


def _int_or_none(text: str) -> int | None:
    return int(text) if re.fullmatch(r"-?\d+", text or "") else None


def parse_run_bench_result(text: str) -> dict[str, Any]:
    """run_bench.sh's result file (``key=value`` lines, schema ``liteship.android_bench/1``) -> typed dict.

    Temperatures become degrees C, frequencies stay kHz, ``peak_rss_bytes`` is VmHWM * 1024 (None when the command
    ended before the first sample).
    """
    raw: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            raw[key.strip()] = value.strip()
    if raw.get("schema") != "liteship.android_bench/1":
        raise DeviceError(f"not a run_bench.sh result (schema {raw.get('schema')!r})")

    def zones(value: str) -> list[dict[str, Any]]:
        out = []
        for item in filter(None, value.split(";")):
            zone, _, rest = item.partition(":")
            kind, _, milli = rest.rpartition(":")
            temp = _int_or_none(milli)
            out.append({"zone": zone, "type": kind, "temp_c": None if temp is None else temp / 1000.0})
        return out

    def freqs(value: str) -> list[dict[str, Any]]:
        out = []
        for item in filter(None, value.split(";")):
            cpu, cur, top = (item.split(":") + ["", ""])[:3]
            out.append({"cpu": cpu, "cur_khz": _int_or_none(cur), "max_khz": _int_or_none(top)})
        return out

    peak_kb = _int_or_none(raw.get("peak_rss_kb", ""))
    samples = _int_or_none(raw.get("memory_samples", ""))
    if (samples or 0) < 2:
        # The first read can come before the forked shell has exec'd the command (a 140 KiB shell, seen with a
        # command done within one sampling interval): one read tells nothing. From the second on, VmHWM is the
        # command's own high-water mark.
        peak_kb = None
    cpus = raw.get("cpus", "all")
    return {
        "schema": raw["schema"],
        "status": _int_or_none(raw.get("status", "")),
        "output": raw.get("output") or None,
        "command": raw.get("command", "").strip(),
        "cores_policy": raw.get("cores_policy"),
        "cpus": None if cpus in ("", "all") else [int(c) for c in cpus.split(",")],
        "cpu_mask": raw.get("cpu_mask") or None,
        "pinned": raw.get("pinned") == "1",
        "pin_note": raw.get("pin_note") or None,
        "cool_below_c": _int_or_none(raw.get("cool_below_c", "")),
        "cooldown_waited_s": _int_or_none(raw.get("cooldown_waited_s", "")),
        "cooldown_timed_out": raw.get("cooldown_timed_out") == "1",
        "cool_note": raw.get("cool_note") or None,
        "thermal_before": zones(raw.get("thermal_before", "")),
        "thermal_after": zones(raw.get("thermal_after", "")),
        "freq_before": freqs(raw.get("freq_before", "")),
        "freq_after": freqs(raw.get("freq_after", "")),
        "peak_rss_bytes": None if peak_kb is None else peak_kb * 1024,
        "memory_samples": samples,
        "started": _int_or_none(raw.get("started", "")),
        "finished": _int_or_none(raw.get("finished", "")),
    }
