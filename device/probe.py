"""What a device is: one POSIX shell script sent once, ``key=value`` lines back, parsed into a dict.

The script sticks to what toybox (Android), busybox (small boards) and coreutils all have: ``cat``, ``head``, ``tr``,
``df -Pk``, ``uname``, ``getprop`` where it exists. Every probe is optional: a missing file prints nothing and the
field is ``None``. Like android_bench/run_bench.sh, it reads cpufreq and thermal zones under ``$LITESHIP_SYSFS``
(default ``/sys``), so both see the same tree on a board that mounts sysfs elsewhere, and in tests. Which cores
are "big" (and "fastest") is decided by run_bench.sh's own ``pick_cpus`` function, sent inside the probe script, so
the probe reports exactly the CPUs ``--cores big`` pins to.
"""

from __future__ import annotations

import re
from typing import Any

from .base import Target, device_python, quote

# Python facts, printed as key=value by the device's interpreter (any Python 3).
_PY_PROBE = r"""
import sys, platform
print("py.version=" + platform.python_version())
print("py.executable=" + sys.executable)
try:
    from importlib.util import find_spec
    from importlib.metadata import version
except ImportError:  # Python < 3.8: nothing liteship's runtime supports anyway
    find_spec = version = None
# Found without importing them (importing LiteRT takes seconds on a small board).
for mod, dist in (("numpy", "numpy"), ("ai_edge_litert", "ai-edge-litert"), ("tflite_runtime", "tflite-runtime")):
    if find_spec is not None and find_spec(mod) is not None:
        try:
            v = version(dist)
        except Exception:
            v = "unknown"
        print("py." + mod + "=" + v)
"""

_SCRIPT = r"""
LS_SYSFS=${LITESHIP_SYSFS:-/sys}
SYSFS=$LS_SYSFS
kv() { printf '%s=%s\n' "$1" "$2"; }
one() { [ -r "$1" ] && tr -d '\000' < "$1" 2>/dev/null | head -n 1; }
kv uname.s "$(uname -s 2>/dev/null)"
kv uname.r "$(uname -r 2>/dev/null)"
kv uname.m "$(uname -m 2>/dev/null)"
kv dt.model "$(one /proc/device-tree/model)"
[ -r /proc/device-tree/compatible ] && kv dt.compatible "$(tr '\000' ' ' < /proc/device-tree/compatible)"
if command -v getprop >/dev/null 2>&1; then
  for p in ro.product.manufacturer ro.product.model ro.product.device ro.board.platform ro.soc.manufacturer \
           ro.soc.model ro.hardware ro.product.cpu.abi ro.product.cpu.abilist ro.build.version.release \
           ro.build.version.sdk ro.build.fingerprint; do
    kv "prop.$p" "$(getprop "$p" 2>/dev/null)"
  done
fi
if [ -r /etc/os-release ]; then
  kv os.pretty "$(. /etc/os-release 2>/dev/null; echo "$PRETTY_NAME")"
fi
if [ -r /proc/cpuinfo ]; then
  kv cpuinfo.hardware "$(grep -i -m 1 '^hardware' /proc/cpuinfo | cut -d: -f2-)"
  kv cpuinfo.model "$(grep -i -m 1 -e '^model name' -e '^cpu model' /proc/cpuinfo | cut -d: -f2-)"
fi
kv cpu.online "$(cat "$LS_SYSFS/devices/system/cpu/online" 2>/dev/null)"
for c in "$LS_SYSFS"/devices/system/cpu/cpu[0-9]*; do
  [ -d "$c" ] || continue
  n=${c##*/cpu}
  kv "cpu.$n.max_khz" "$(cat "$c/cpufreq/cpuinfo_max_freq" 2>/dev/null)"
  kv "cpu.$n.cur_khz" "$(cat "$c/cpufreq/scaling_cur_freq" 2>/dev/null)"
  kv "cpu.$n.governor" "$(cat "$c/cpufreq/scaling_governor" 2>/dev/null)"
  kv "cpu.$n.capacity" "$(cat "$c/cpu_capacity" 2>/dev/null)"
done
kv cpu.big "$(pick_cpus big)"
kv cpu.fastest "$(pick_cpus fastest)"
kv mem.total_kb "$(grep -m 1 '^MemTotal:' /proc/meminfo 2>/dev/null | tr -s ' ' | cut -d' ' -f2)"
kv mem.available_kb "$(grep -m 1 '^MemAvailable:' /proc/meminfo 2>/dev/null | tr -s ' ' | cut -d' ' -f2)"
mkdir -p "$LS_WORKDIR" 2>/dev/null
kv df "$(df -Pk "$LS_WORKDIR" 2>/dev/null | tail -n 1)"
for z in "$LS_SYSFS"/class/thermal/thermal_zone[0-9]*; do
  [ -d "$z" ] || continue
  n=${z##*thermal_zone}
  kv "thermal.$n.type" "$(cat "$z/type" 2>/dev/null)"
  kv "thermal.$n.temp" "$(cat "$z/temp" 2>/dev/null)"
done
for t in sh sha256sum toybox busybox taskset python3 getprop; do
  kv "tool.$t" "$(command -v "$t" 2>/dev/null)"
done
if command -v "$LS_PYTHON" >/dev/null 2>&1; then
  kv py.path "$(command -v "$LS_PYTHON")"
  "$LS_PYTHON" -c "$LS_PY_PROBE" 2>/dev/null
fi
exit 0
"""


def _pick_cpus_function() -> str:
    """run_bench.sh's ``pick_cpus`` (and the ``is_number`` it calls), cut out between its begin/end markers."""
    from .run_bench import run_bench_script

    text = run_bench_script().read_text()
    start = text.index("# --- begin pick_cpus")
    return text[start : text.index("# --- end pick_cpus", start)]


def probe_script(workdir: str, python: str = "python3") -> str:
    return (
        f"LS_WORKDIR={quote(workdir)}\nLS_PYTHON={quote(python)}\nLS_PY_PROBE={quote(_PY_PROBE)}\n"
        + _pick_cpus_function() + _SCRIPT
    )


def parse_probe_output(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.match(r"^[A-Za-z0-9_.]+$", key):
            values[key] = value.strip()
    return values


def _int(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def _temp_c(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    if value is None:
        return None
    # Linux reports millidegrees Celsius; a few old drivers report degrees.
    return round(value / 1000.0, 1) if abs(value) > 500 else value


def summarize(raw: dict[str, str], *, target: str, kind: str, workdir: str) -> dict[str, Any]:
    """The probe dict: model, soc, abi, os, cpu, memory, storage, python, tflite_runtime, thermal, tools."""
    get = lambda key: raw.get(key) or None  # noqa: E731 - empty output means unknown

    manufacturer, product = get("prop.ro.product.manufacturer"), get("prop.ro.product.model")
    model = get("dt.model") or (" ".join(x for x in (manufacturer, product) if x) or None) \
        or get("cpuinfo.hardware") or get("cpuinfo.model")

    compatible = (get("dt.compatible") or "").split()
    soc_model = get("prop.ro.soc.model")
    soc = (" ".join(x for x in (get("prop.ro.soc.manufacturer"), soc_model) if x) if soc_model else None) \
        or get("prop.ro.board.platform") or (compatible[-1] if compatible else None) \
        or get("cpuinfo.hardware") or get("prop.ro.hardware")

    if get("prop.ro.build.version.release"):
        os_name = f"Android {get('prop.ro.build.version.release')} (SDK {get('prop.ro.build.version.sdk')})"
    else:
        os_name = get("os.pretty") or " ".join(x for x in (get("uname.s"), get("uname.r")) if x) or None

    cores = sorted({int(k.split(".")[1]) for k in raw if re.match(r"^cpu\.\d+\.", k)})
    max_khz = [_int(raw.get(f"cpu.{i}.max_khz")) for i in cores]
    # run_bench.sh's pick_cpus decided these on the device; empty when sysfs cannot tell the cores apart.
    big = sorted(int(n) for n in (raw.get("cpu.big") or "").split())
    fastest = sorted(int(n) for n in (raw.get("cpu.fastest") or "").split())

    df = raw.get("df", "").split()
    free = total = None
    for i, field in enumerate(df):
        if field.endswith("%") and i >= 3 and df[i - 1].isdigit():
            free, total = int(df[i - 1]) * 1024, int(df[i - 3]) * 1024 if df[i - 3].isdigit() else None
            break

    zones = sorted({int(k.split(".")[1]) for k in raw if re.match(r"^thermal\.\d+\.", k)})
    thermal = [{"zone": z, "type": get(f"thermal.{z}.type"), "temp_c": _temp_c(get(f"thermal.{z}.temp"))}
               for z in zones]

    python = None
    if get("py.version"):
        python = {"path": get("py.path"), "version": get("py.version"), "numpy": get("py.numpy"),
                  "ai_edge_litert": get("py.ai_edge_litert"), "tflite_runtime": get("py.tflite_runtime")}
    runtime = None
    if python and python["ai_edge_litert"]:
        runtime = f"ai-edge-litert {python['ai_edge_litert']}"
    elif python and python["tflite_runtime"]:
        runtime = f"tflite-runtime {python['tflite_runtime']}"

    return {
        "target": target,
        "kind": kind,
        "model": model,
        "soc": soc,
        "abi": get("prop.ro.product.cpu.abi") or get("uname.m"),
        "os": os_name,
        "kernel": get("uname.r"),
        "cpu": {
            "cores": len(cores) or None,
            "online": get("cpu.online"),
            "model": get("cpuinfo.model") or get("cpuinfo.hardware"),
            "max_khz": max_khz,
            "capacity": [_int(raw.get(f"cpu.{i}.capacity")) for i in cores],
            "big_cores": big,
            "fastest_cores": fastest,
            "governors": sorted({raw[f"cpu.{i}.governor"] for i in cores if raw.get(f"cpu.{i}.governor")}),
        },
        "memory": {"total_bytes": (_int(get("mem.total_kb")) or 0) * 1024 or None,
                   "available_bytes": (_int(get("mem.available_kb")) or 0) * 1024 or None},
        "storage": {"path": workdir, "free_bytes": free, "total_bytes": total},
        "python": python,
        "tflite_runtime": runtime,
        "thermal": thermal,
        "tools": {k[5:]: v for k, v in raw.items() if k.startswith("tool.") and v},
    }


def probe(target: Target, *, workdir: str | None = None, python: str | None = None, timeout: float = 60) -> dict:
    """Probe ``target`` in one round trip and return the summary dict (see :func:`summarize`). The Python checked
    is the spec's ``?python=``, else ``python``, else python3 (see base.device_python)."""
    workdir = workdir or target.default_workdir()
    out = target.shell(probe_script(workdir, device_python(target, python)), timeout=timeout)
    return summarize(parse_probe_output(out.stdout), target=target.name, kind=target.kind, workdir=workdir)


def _core_tiers(cpu: dict) -> str:
    """", big cores 4-7, fastest 7" when the cores differ (what --cores big / fastest pin to); else nothing."""
    big, fastest = cpu.get("big_cores") or [], cpu.get("fastest_cores") or []
    if not big:
        return ", no cpu_capacity or cpufreq to tell cores apart (--cores big/fastest will not pin)"
    if len(big) == (cpu["cores"] or 0):
        return ""
    text = f", big cores {_cpu_list(big)}"
    return text + (f", fastest {_cpu_list(fastest)}" if fastest and fastest != big else "")


def _cpu_list(cpus: list[int]) -> str:
    """[4, 5, 6, 8] -> "4-6,8", the way the kernel writes CPU lists."""
    runs: list[list[int]] = []
    for n in cpus:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ",".join(map(str, r)) for r in runs)


def _ram(memory: dict) -> str:
    total, available = memory.get("total_bytes"), memory.get("available_bytes")
    if total is None:
        return "unknown"
    text = f"{total / 2**30:.1f} GiB total"
    return text + (f", {available / 2**30:.1f} GiB available" if available is not None else "")


def format_probe(facts: dict) -> str:
    """A few readable lines for the terminal."""
    cpu = facts["cpu"]
    mhz = sorted({f // 1000 for f in cpu["max_khz"] if f}, reverse=True)
    storage = facts["storage"]
    py = facts["python"]
    rows = [
        ("device", facts["target"]),
        ("model", facts["model"] or "unknown"),
        ("SoC/board", facts["soc"] or "unknown"),
        ("ABI", facts["abi"] or "unknown"),
        ("OS", facts["os"] or "unknown"),
        ("CPU", f"{cpu['cores'] or '?'} cores" + (f", max {'/'.join(map(str, mhz))} MHz" if mhz else "")
                + _core_tiers(cpu)),
        ("RAM", _ram(facts["memory"])),
        ("free storage", f"{storage['free_bytes'] / 1e9:.2f} GB in {storage['path']}"
                         if storage["free_bytes"] is not None else f"unknown ({storage['path']})"),
        ("Python", f"{py['version']} ({py['path']}), numpy {py['numpy'] or 'missing'}" if py else "not found"),
        ("TFLite runtime", facts["tflite_runtime"] or "none (pip install ai-edge-litert, or use --benchmark-binary)"),
    ]
    hot = [f"{z['type']} {z['temp_c']:.0f}°C" for z in facts["thermal"] if z["temp_c"] is not None]
    rows.append(("thermal", ", ".join(hot[:8]) + (f" (+{len(hot) - 8} more)" if len(hot) > 8 else "")
                 if hot else "no thermal zones"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
