"""Small inline-SVG plots for the HTML report, drawn here from numbers: no plotting library, no script, no network.

Each function returns one ``<svg>`` element as text; every label goes through html.escape.
"""

from __future__ import annotations

import math
from html import escape
from typing import Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
FONT = 'font-family="sans-serif" font-size="11"'


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.floor(lo / step) * step
    n = max(1, math.ceil((hi - start) / step - 1e-9))  # the last tick is at or past hi: every value is inside
    return [round(start + i * step, 12) for i in range(n + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks per decade covering [lo, hi] (both > 0), for data spanning more than a decade or so."""
    ticks = []
    for exp in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        ticks += [m * 10.0 ** exp for m in (1, 2, 5)]
    below = [t for t in ticks if t <= lo]
    above = [t for t in ticks if t >= hi]
    return [t for t in ticks if (below[-1] if below else ticks[0]) <= t <= (above[0] if above else ticks[-1])]


def wants_log(values: Sequence[float]) -> bool:
    """A log axis when every value is positive and they span more than 20x: one slow run or one big model would
    otherwise squash every other point into a corner."""
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and len(values) > 1 and max(values) / min(values) > 20


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


class _Axes:
    """A plot area with a linear (or log) x and y mapping and its frame, ticks and labels."""

    def __init__(self, width: int, height: int, left: int, right: int, top: int, bottom: int):
        self.width, self.height = width, height
        self.x0, self.x1, self.y0, self.y1 = left, width - right, height - bottom, top
        self.parts: list[str] = []

    xlog = ylog = False

    def scale_x(self, lo: float, hi: float, log: bool = False) -> None:
        self.xlog, self.xt = log, log_ticks(lo, hi) if log else nice_ticks(lo, hi)
        self.xlo, self.xhi = self.xt[0], self.xt[-1]

    def scale_y(self, lo: float, hi: float, log: bool = False) -> None:
        self.ylog, self.yt = log, log_ticks(lo, hi) if log else nice_ticks(lo, hi)
        self.ylo, self.yhi = self.yt[0], self.yt[-1]

    @staticmethod
    def _frac(v: float, lo: float, hi: float, log: bool) -> float:
        if log:
            v, lo, hi = (math.log10(max(x, 1e-300)) for x in (v, lo, hi))
        return (v - lo) / ((hi - lo) or 1)

    def x(self, v: float) -> float:
        return self.x0 + self._frac(v, self.xlo, self.xhi, self.xlog) * (self.x1 - self.x0)

    def y(self, v: float) -> float:
        return self.y0 - self._frac(v, self.ylo, self.yhi, self.ylog) * (self.y0 - self.y1)

    def frame(self, xlabel: str, ylabel: str | None, *, yticks: bool = True) -> None:
        p = self.parts
        p.append(f'<rect x="{self.x0}" y="{self.y1}" width="{self.x1 - self.x0}" height="{self.y0 - self.y1}" '
                 'fill="none" stroke="#888"/>')
        for t in self.xt:
            x = self.x(t)
            p.append(f'<line x1="{x:.1f}" y1="{self.y0}" x2="{x:.1f}" y2="{self.y1}" stroke="#eee"/>')
            p.append(f'<text x="{x:.1f}" y="{self.y0 + 14}" text-anchor="middle" {FONT}>{_fmt(t)}</text>')
        p.append(f'<text x="{(self.x0 + self.x1) / 2:.1f}" y="{self.height - 4}" text-anchor="middle" {FONT}>'
                 f'{escape(xlabel + (", log scale" if self.xlog else ""))}</text>')
        if yticks:
            for t in self.yt:
                y = self.y(t)
                p.append(f'<line x1="{self.x0}" y1="{y:.1f}" x2="{self.x1}" y2="{y:.1f}" stroke="#eee"/>')
                p.append(f'<text x="{self.x0 - 4}" y="{y + 4:.1f}" text-anchor="end" {FONT}>{_fmt(t)}</text>')
        if ylabel:
            p.append(f'<text x="12" y="{(self.y0 + self.y1) / 2:.1f}" text-anchor="middle" {FONT} '
                     f'transform="rotate(-90 12 {(self.y0 + self.y1) / 2:.1f})">'
                     f'{escape(ylabel + (", log scale" if self.ylog else ""))}</text>')

    def svg(self, title: str) -> str:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}" role="img" aria-label="{escape(title)}">'
                f'<title>{escape(title)}</title>' + "".join(self.parts) + "</svg>")


def box_plot(rows: Sequence[tuple[str, Sequence[float]]], *, xlabel: str, title: str, width: int = 760) -> str:
    """One horizontal box per row: whiskers min-max, box p25-p75, line at the median, dots at p90 and p99,
    and every sample as a faint tick, so the shape of the distribution shows."""
    rows = [(label, sorted(s)) for label, s in rows if len(s)]
    row_h = 34
    left = min(320, 12 + 6 * max((len(label) for label, _ in rows), default=10))
    ax = _Axes(width, 40 + row_h * max(1, len(rows)), left, 16, 10, 30)
    lo = min((s[0] for _, s in rows), default=0.0)
    hi = max((s[-1] for _, s in rows), default=1.0)
    log = wants_log([lo, hi])
    ax.scale_x(lo if log else (min(0.0, lo) if lo < 0 else lo * 0.95), hi * 1.02, log=log)
    ax.scale_y(0, 1)
    ax.frame(xlabel, None, yticks=False)

    def q(s, p):
        return s[min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))]

    for i, (label, s) in enumerate(rows):
        cy = ax.y1 + row_h * i + row_h / 2 + 2
        color = PALETTE[i % len(PALETTE)]
        p = ax.parts
        p.append(f'<text x="{ax.x0 - 6}" y="{cy + 4:.1f}" text-anchor="end" {FONT}>{escape(label)}</text>')
        for v in s:
            p.append(f'<line x1="{ax.x(v):.1f}" y1="{cy - 12:.1f}" x2="{ax.x(v):.1f}" y2="{cy - 8:.1f}" '
                     f'stroke="{color}" stroke-opacity="0.35"/>')
        p.append(f'<line x1="{ax.x(s[0]):.1f}" y1="{cy:.1f}" x2="{ax.x(s[-1]):.1f}" y2="{cy:.1f}" stroke="{color}"/>')
        x25, x75 = ax.x(q(s, 25)), ax.x(q(s, 75))
        p.append(f'<rect x="{x25:.1f}" y="{cy - 6:.1f}" width="{max(1.0, x75 - x25):.1f}" height="12" '
                 f'fill="{color}" fill-opacity="0.25" stroke="{color}"/>')
        p.append(f'<line x1="{ax.x(q(s, 50)):.1f}" y1="{cy - 7:.1f}" x2="{ax.x(q(s, 50)):.1f}" y2="{cy + 7:.1f}" '
                 f'stroke="{color}" stroke-width="2"/>')
        for pct in (90, 99):
            p.append(f'<circle cx="{ax.x(q(s, pct)):.1f}" cy="{cy + 10:.1f}" r="2.5" fill="{color}">'
                     f'<title>p{pct} {_fmt(q(s, pct))}</title></circle>')
    return ax.svg(title)


def scatter(points: Sequence[dict], *, xlabel: str, ylabel: str, title: str, width: int = 760,
            height: int = 360) -> str:
    """Points {x, y, label, note}: each labeled beside it (note: e.g. the accuracy)."""
    ax = _Axes(width, height, 60, 180, 12, 34)
    xs = [p["x"] for p in points] or [0.0, 1.0]
    ys = [p["y"] for p in points] or [0.0, 1.0]
    xlog, ylog = wants_log(xs), wants_log(ys)
    ax.scale_x(min(xs) if xlog else 0, max(xs) * 1.1, log=xlog)
    ax.scale_y(min(ys) if ylog else 0, max(ys) * 1.1, log=ylog)
    ax.frame(xlabel, ylabel)
    for i, p in enumerate(points):
        color = PALETTE[i % len(PALETTE)]
        x, y = ax.x(p["x"]), ax.y(p["y"])
        text = p["label"] + (f" ({p['note']})" if p.get("note") else "")
        ax.parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{color}"><title>{escape(text)}</title>'
                        '</circle>')
        ax.parts.append(f'<text x="{x + 8:.1f}" y="{y + 4 + 12 * (i % 2):.1f}" {FONT} fill="{color}">'
                        f'{escape(text)}</text>')
    return ax.svg(title)


def line_chart(series: Sequence[tuple[str, Sequence[tuple[float, float]]]], *, xlabel: str, ylabel: str,
               title: str, width: int = 760, height: int = 320) -> str:
    """Lines through (x, y) points, one per series, with a legend on the right."""
    series = [(name, sorted(pts)) for name, pts in series if pts]
    ax = _Axes(width, height, 60, 200, 12, 34)
    xs = [x for _, pts in series for x, _ in pts] or [0.0, 1.0]
    ys = [y for _, pts in series for _, y in pts] or [0.0, 1.0]
    ax.scale_x(0, max(xs))
    ax.scale_y(0, max(ys) * 1.1)
    ax.frame(xlabel, ylabel)
    for i, (name, pts) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{'M' if j == 0 else 'L'}{ax.x(x):.1f},{ax.y(y):.1f}" for j, (x, y) in enumerate(pts))
        ax.parts.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in pts:
            ax.parts.append(f'<circle cx="{ax.x(x):.1f}" cy="{ax.y(y):.1f}" r="3" fill="{color}">'
                            f'<title>{escape(name)}: {_fmt(y)} at {_fmt(x)}</title></circle>')
        ly = ax.y1 + 14 + 16 * i
        ax.parts.append(f'<line x1="{ax.x1 + 10}" y1="{ly - 4}" x2="{ax.x1 + 28}" y2="{ly - 4}" stroke="{color}" '
                        'stroke-width="2"/>')
        ax.parts.append(f'<text x="{ax.x1 + 32}" y="{ly}" {FONT}>{escape(name)}</text>')
    return ax.svg(title)
