"""A readable Markdown report of a ``liteship.device-bench/1`` result (also what the terminal shows)."""

from __future__ import annotations

from typing import Any

from liteship.units import size_text

# (header, how to get the cell from one successful result entry). One row per device.
COLUMNS: tuple[tuple[str, Any], ...] = (
    ("device", lambda e: e["target"]),
    ("model / SoC", lambda e: _device_name(e.get("device"))),
    ("runner", lambda e: e["runner"]),
    ("backend", lambda e: (e["bench"].get("runtime") or {}).get("backend") or "benchmark_model"),
    ("threads", lambda e: (e["bench"].get("runtime") or {}).get("threads") or e["bench"].get("threads") or "default"),
    ("cores", lambda e: _cores(e.get("run"))),
    ("init ms", lambda e: _f(e["bench"].get("init_ms"), 1)),
    ("first ms", lambda e: _f(e["bench"].get("first_inference_ms"), 3)),
    ("mean ms", lambda e: _f(_lat(e, "mean"), 3)),
    ("std ms", lambda e: _f(_lat(e, "std"), 3)),
    ("p50 ms", lambda e: _f(_lat(e, "p50"), 3)),
    ("p90 ms", lambda e: _f(_lat(e, "p90"), 3)),
    ("p99 ms", lambda e: _f(_lat(e, "p99"), 3)),
    ("runs", lambda e: e["bench"].get("runs") or "-"),
    ("peak RSS MiB", lambda e: _mib(e["bench"].get("peak_rss_bytes"))),
    ("model RSS MiB", lambda e: _mib(e["bench"].get("model_rss_bytes"))),  # peak minus the runner's baseline
    ("decode tok/s", lambda e: _f((e["bench"].get("generation") or {}).get("decode_tok_s"), 1)),
    ("max temp °C", lambda e: _f(_hottest(e.get("run")), 0)),
)


def _f(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def _size(n: int) -> str:
    return size_text(n)


def _lat(entry: dict, key: str) -> Any:
    return (entry["bench"].get("latency_ms") or {}).get(key)


def _device_name(facts: dict | None) -> str:
    if not facts:
        return "-"
    parts = [facts.get("model"), facts.get("soc"), facts.get("abi")]
    return " / ".join(str(p) for p in parts if p) or "-"


def _cores(run: dict | None) -> str:
    if not run:
        return "all"
    if run.get("pinned") and run.get("cpus"):
        return ",".join(map(str, run["cpus"]))
    return "all" + (" (not pinned)" if run.get("cores_policy") not in (None, "all") else "")


def _hottest(run: dict | None) -> float | None:
    temps = [z["temp_c"] for z in (run or {}).get("thermal_after", []) if z.get("temp_c") is not None]
    return max(temps) if temps else None


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_report(document: dict) -> str:
    """The whole report: what was measured, one table row per device that succeeded, then each failure."""
    bundle, settings = document["bundle"], document["settings"]
    size = bundle.get("model_size_bytes")
    lines = [
        f"# liteship device benchmark: {bundle['name']}",
        "",
        f"- bundle: `{bundle['path']}` (model {_size(size)}, sha256 {str(bundle.get('model_sha256'))[:12]})"
        if size is not None else f"- bundle: `{bundle['path']}`",
        f"- settings: runs={settings['runs']}, warmup={settings['warmup']}, threads={settings['threads'] or 'default'}, "
        f"cores={settings['cores']}" + (f", cool below {settings['cool_below_c']} °C" if settings.get("cool_below_c")
                                       else ""),
        f"- created: {document['created']} by liteship {document['host']['liteship']}",
        "",
    ]
    ok = [e for e in document["results"] if e.get("ok")]
    failed = [e for e in document["results"] if not e.get("ok")]
    if ok:
        lines.append("| " + " | ".join(h for h, _ in COLUMNS) + " |")
        lines.append("|" + "|".join("---" for _ in COLUMNS) + "|")
        for entry in ok:
            lines.append("| " + " | ".join(_cell(get(entry)) for _, get in COLUMNS) + " |")
        lines.append("")
        gen = [e for e in ok if e["bench"].get("generation")]
        for entry in gen:
            g = entry["bench"]["generation"]
            lines.append(f"- {entry['target']}: prefill {_f(g.get('prefill_tok_s'), 1)} tok/s over "
                         f"{g.get('prefill_tokens')} tokens, decode {_f(g.get('decode_tok_s'), 1)} tok/s over "
                         f"{g.get('decode_tokens')} tokens ending at a {g.get('context')}-token context"
                         + (f"; KV cache: {g['kv_cache']}" if g.get("kv_cache") else ""))
        notes = [(e["target"], w) for e in ok for w in e.get("warnings") or ()]
        for target, note in notes:
            lines.append(f"- {target}: warning: {note}")
        profiled = [e for e in ok if e["bench"].get("top_ops")]
        for entry in profiled:  # benchmark_model --enable_op_profiling: where the time of one run goes, by op type
            ops = ", ".join(f"{o['op']} {_f(o['avg_ms'], 3)} ms ({_f(o['percent'], 1)}%)"
                            for o in entry["bench"]["top_ops"][:5])
            lines.append(f"- {entry['target']}: top ops per run: {ops}")
        if gen or notes or profiled:
            lines.append("")
    if failed:
        lines.append("## Failed")
        lines.append("")
        for entry in failed:
            error = str(entry["error"])
            prefix = f"{entry['target']}: "
            lines.append(f"- **{entry['target']}**: {error[len(prefix):] if error.startswith(prefix) else error}")
        lines.append("")
    return "\n".join(lines)
