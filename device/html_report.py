"""`liteship report`: one self-contained HTML page (inline SVG, inline CSS, no script, no network) and a Markdown
summary from ``liteship.check/1`` and ``liteship.device-bench/1`` results.

The page: the budget table, latency distributions per variant and device, size vs latency vs quality, GPT-2
decode speed by context, sustained throughput and temperature over time, and the devices' facts (thermal and
CPU frequency before and after).
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from liteship.errors import LiteshipError

from . import svg
from .budget_table import failures, format_markdown
from .budget_table import rows as budget_rows

CHECK_SCHEMA = "liteship.check/1"
BENCH_SCHEMA = "liteship.device-bench/1"
# No request can leave the page: styles inline, images only as data: URLs, nothing else allowed.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1100px; color: #222; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.pass { background: #e6f4e6; } td.fail { background: #fbe3e3; }
.note { color: #666; font-size: 12px; }
svg { display: block; margin: 0.5em 0 1.5em; }
"""


class ReportError(LiteshipError):
    """A results file the report cannot read."""


def load(paths: list[str | Path]) -> tuple[list[dict], list[dict]]:
    """(check documents, cells) from results files (or folders holding check.json). A cell: variant, device,
    entry (device-bench result entry), size_bytes, quantization, eval, verdicts, passed, source file."""
    docs, cells = [], []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            path = path / "check.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReportError(f"{path}: cannot read it as results ({getattr(exc, 'strerror', None) or exc})") \
                from None
        schema = doc.get("schema") if isinstance(doc, dict) else None
        if schema == CHECK_SCHEMA:
            docs.append(dict(doc, _file=str(path)))
            for c in doc["cells"]:
                variant = doc["variants"].get(c["variant"], {})
                cells.append({"variant": c["variant"], "device": c["device"], "entry": c.get("entry"),
                              "ok": c.get("ok"), "error": c.get("error"), "size_bytes": variant.get("size_bytes"),
                              "quantization": variant.get("quantization"), "eval": variant.get("eval"),
                              "verdicts": c.get("verdicts"), "passed": c.get("passed"), "file": str(path)})
        elif schema == BENCH_SCHEMA:
            for e in doc["results"]:
                cells.append({"variant": doc["bundle"]["name"], "device": e["target"], "entry": e, "ok": e["ok"],
                              "error": e.get("error"), "size_bytes": doc["bundle"].get("model_size_bytes"),
                              "quantization": ((e.get("bench") or {}).get("model") or {}).get("quantization"),
                              "eval": None, "verdicts": None, "passed": None, "file": str(path)})
        else:
            raise ReportError(f"{path}: schema {schema!r} is neither {CHECK_SCHEMA!r} nor {BENCH_SCHEMA!r}")
    return docs, cells


def _bench(cell: dict) -> dict:
    return ((cell.get("entry") or {}).get("bench") or {}) if cell.get("ok") else {}


def _label(cell: dict) -> str:
    return f"{cell['variant']} @ {cell['device']}"


def _quality(cell: dict) -> str | None:
    ev = cell.get("eval") or {}
    if ev.get("accuracy") is not None:
        return f"acc {100 * ev['accuracy']:.1f}%"
    if ev.get("perplexity") is not None:
        return f"ppl {ev['perplexity']:.2f}"
    return None


def _table(header: list[str], body: list[list[str]], classes: list[list[str]] | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    out = [f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>']
    for i, row in enumerate(body):
        cls = classes[i] if classes else [""] * len(row)
        out.append("<tr>" + "".join(f'<td class="{c}">{escape(str(v))}</td>' if c else f"<td>{escape(str(v))}</td>"
                                    for v, c in zip(row, cls)) + "</tr>")
    return "".join(out) + "</tbody></table></div>"


def _budget_section(docs: list[dict]) -> str:
    parts = []
    for doc in docs:
        header, body = budget_rows(doc)
        classes = [["", "", "pass" if r[2] == "pass" else "fail"] +
                   ["" if c == "-" else ("pass" if c.startswith("pass") else "fail") for c in r[3:]] for r in body]
        verdict = "every cell within budget" if doc.get("passed") else "over budget"
        parts.append(f"<h3>{escape(doc['budget']['path'])}: {verdict}</h3>"
                     f'<p class="note">from {escape(doc["_file"])}; cells show pass/FAIL, the measured value and the '
                     "margin to the limit (negative: over it)</p>" + _table(header, body, classes))
        fails = failures(doc)
        if fails:
            parts.append("<ul>" + "".join(f"<li>{escape(line)}</li>" for line in fails) + "</ul>")
    return "<h2>Budget</h2>" + "".join(parts) if parts else ""


def _latency_section(cells: list[dict]) -> str:
    rows = [(_label(c), (_bench(c).get("latency_ms") or {}).get("samples") or []) for c in cells]
    rows = [r for r in rows if r[1]]
    if not rows:
        return ""
    return ("<h2>Latency distributions</h2><p class=\"note\">one inference (GPT-2: one decode step) per sample; box "
            "p25-p75, bar at the median, dots at p90 and p99, ticks for every run</p>"
            + svg.box_plot(rows, xlabel="latency (ms)", title="latency per variant and device"))


def _tradeoff_section(cells: list[dict]) -> str:
    points = []
    for c in cells:
        p50 = (_bench(c).get("latency_ms") or {}).get("p50")
        if p50 is not None and c.get("size_bytes"):
            points.append({"x": c["size_bytes"] / 1e6, "y": p50, "label": _label(c), "note": _quality(c)})
    if not points:
        return ""
    return ("<h2>Size vs latency vs quality</h2>"
            + svg.scatter(points, xlabel="model size (MB)", ylabel="p50 latency (ms)",
                          title="size, latency and quality per variant and device"))


def _tok_s_section(cells: list[dict]) -> str:
    series = []
    for c in cells:
        gen = _bench(c).get("generation") or {}
        longest = gen.get("max_context") or float("inf")  # a context past it was measured at it
        points = {min(float(k), longest): float(v) for k, v in (gen.get("decode_tok_s_by_context") or {}).items()}
        if points:
            series.append((_label(c), sorted(points.items())))
    if not series:
        return ""
    return ("<h2>GPT-2 decode speed by context</h2><p class=\"note\">tokens per second of decode steps ending at "
            "each number of filled cache slots</p>"
            + svg.line_chart(series, xlabel="context (tokens)", ylabel="decode tok/s", title="decode tok/s by context"))


def _sustained_section(cells: list[dict]) -> str:
    rate, temp = [], []
    for c in cells:
        points = (_bench(c).get("sustained") or {}).get("points") or []
        if points:
            rate.append((_label(c), [(p["t_s"], p["runs_per_s"]) for p in points]))
            hot = [(p["t_s"], p["max_temp_c"]) for p in points if p.get("max_temp_c") is not None]
            if hot:
                temp.append((_label(c), hot))
    if not rate:
        return ""
    out = "<h2>Sustained runs</h2>" + svg.line_chart(rate, xlabel="time (s)", ylabel="inferences/s",
                                                      title="throughput over time")
    if temp:
        out += svg.line_chart(temp, xlabel="time (s)", ylabel="hottest zone (°C)", title="temperature over time")
    return out


def _hottest(zones) -> str:
    temps = [z["temp_c"] for z in zones or [] if z.get("temp_c") is not None]
    return f"{max(temps):.1f}" if temps else "-"


def _freqs(freqs) -> str:
    khz = [f["cur_khz"] for f in freqs or [] if f.get("cur_khz")]
    return f"{min(khz) / 1e3:.0f}-{max(khz) / 1e3:.0f}" if khz else "-"


def _devices_section(cells: list[dict]) -> str:
    header = ["variant @ device", "model / SoC / ABI", "cores", "OS", "runtime", "max temp before / after (°C)",
              "CPU MHz before / after", "peak RSS (MiB)", "model RSS (MiB)", "init (ms)"]
    body = []
    for c in cells:
        e = c.get("entry") or {}
        facts, run, bench = e.get("device") or {}, e.get("run") or {}, _bench(c)
        name = " / ".join(str(x) for x in (facts.get("model"), facts.get("soc"), facts.get("abi")) if x) or "-"
        rss, model_rss = bench.get("peak_rss_bytes"), bench.get("model_rss_bytes")
        body.append([_label(c), name, (facts.get("cpu") or {}).get("cores") or "-", facts.get("os") or "-",
                     facts.get("tflite_runtime") or "-",
                     f"{_hottest(run.get('thermal_before'))} / {_hottest(run.get('thermal_after'))}",
                     f"{_freqs(run.get('freq_before'))} / {_freqs(run.get('freq_after'))}",
                     f"{rss / 2**20:.1f}" if rss else "-",
                     f"{model_rss / 2**20:.1f}" if model_rss is not None else "-",
                     f"{bench['init_ms']:.1f}" if bench.get("init_ms") is not None else "-"])
    return "<h2>Devices</h2>" + _table(header, body)


def _failed_section(cells: list[dict]) -> str:
    failed = [c for c in cells if not c.get("ok")]
    if not failed:
        return ""
    return "<h2>Devices that failed</h2><ul>" + "".join(
        f"<li>{escape(_label(c))}: {escape(str(c.get('error')))}</li>" for c in failed) + "</ul>"


def render_html(paths: list[str | Path]) -> str:
    from liteship import __version__

    docs, cells = load(paths)
    body = "".join([
        "<h1>liteship report</h1>",
        f'<p class="note">{len(cells)} variant x device cell(s) from '
        + ", ".join(escape(str(p)) for p in paths) + f"; liteship {escape(__version__)}</p>",
        _budget_section(docs), _latency_section(cells), _tradeoff_section(cells), _tok_s_section(cells),
        _sustained_section(cells), _devices_section(cells), _failed_section(cells),
    ])
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>liteship report</title><style>{STYLE}</style></head><body>{body}</body></html>\n")


def render_markdown(paths: list[str | Path]) -> str:
    """For a pull request: the budget table(s), then p50/p90/p99, size and quality per cell."""
    docs, cells = load(paths)
    lines = ["## liteship report", ""]
    for doc in docs:
        verdict = "every cell within budget" if doc.get("passed") else "**over budget**"
        lines += [f"Budget `{doc['budget']['path']}`: {verdict}", "", format_markdown(doc), ""]
    lines += ["| variant | device | size MB | p50 ms | p90 ms | p99 ms | decode tok/s | quality |",
              "|---|---|---|---|---|---|---|---|"]
    def f(v, d=3):
        return "-" if v is None else f"{v:.{d}f}"

    for c in cells:
        lat = _bench(c).get("latency_ms") or {}
        tok = (_bench(c).get("generation") or {}).get("decode_tok_s")
        size = c["size_bytes"] / 1e6 if c.get("size_bytes") else None
        lines.append(f"| {c['variant']} | {c['device']} | {f(size, 2)}"
                     f" | {f(lat.get('p50'))} | {f(lat.get('p90'))} | {f(lat.get('p99'))} | {f(tok, 1)} | "
                     f"{_quality(c) or '-'} |" if c.get("ok") else
                     f"| {c['variant']} | {c['device']} | - | failed: {str(c.get('error')).replace('|', '/')} "
                     "| | | | |")
    return "\n".join(lines) + "\n"
