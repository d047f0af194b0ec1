"""The budget table of a ``liteship.check/1`` document: one row per variant x device, one column per limit, each
cell pass/fail with the measured value and the margin. Text for the terminal, Markdown for a pull request; the
HTML report renders the same rows."""

from __future__ import annotations

from .budget import LIMITS


def _num(value: float) -> str:
    value += 0.0  # -0.0 -> 0.0: no "-0" in a table
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def verdict_text(v: dict) -> str:
    if v["measured"] is None:
        why = "no result" if v.get("note", "").startswith("device failed") else "not measured"
        return f"FAIL {why} (limit {_num(v['limit'])})"
    return f"{'pass' if v['passed'] else 'FAIL'} {_num(v['measured'])} ({'+' if v['margin'] >= 0 else ''}" \
           f"{_num(v['margin'])})"


def columns(doc: dict) -> list[str]:
    """The limit keys any cell has, in LIMITS order."""
    used = {v["key"] for cell in doc["cells"] for v in cell.get("verdicts", [])}
    return [key for key in LIMITS if key in used]


def rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of plain strings."""
    keys = columns(doc)
    header = ["variant", "device", "result"] + [f"{k} ({LIMITS[k].unit})" for k in keys]
    out = []
    for cell in doc["cells"]:
        by_key = {v["key"]: v for v in cell.get("verdicts", [])}
        result = "pass" if cell.get("passed") else ("FAIL" if cell.get("ok") else "FAIL (device)")
        out.append([cell["variant"], cell["device"], result] +
                   [verdict_text(by_key[k]) if k in by_key else "-" for k in keys])
    return header, out


def failures(doc: dict) -> list[str]:
    """One line per failed cell: the device error, or the limits it broke."""
    lines = []
    for cell in doc["cells"]:
        if cell.get("passed"):
            continue
        if not cell.get("ok"):
            lines.append(f"{cell['variant']} on {cell['device']}: device failed: {cell.get('error')}")
            continue
        broken = [f"{v['key']} {verdict_text(v)}" for v in cell.get("verdicts", []) if not v["passed"]]
        lines.append(f"{cell['variant']} on {cell['device']}: " + "; ".join(broken))
    return lines


def format_text(doc: dict) -> str:
    header, body = rows(doc)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in body]
    passed = sum(1 for c in doc["cells"] if c.get("passed"))
    lines.append("")
    lines.append(f"{passed} of {len(doc['cells'])} cells within budget ({doc['budget']['path']})")
    return "\n".join(lines)


def format_markdown(doc: dict) -> str:
    header, body = rows(doc)

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in body]
    return "\n".join(lines)
