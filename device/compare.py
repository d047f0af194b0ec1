"""`liteship compare OLD NEW`: what changed per metric and device, and is it real?

Latency percentiles (p50, p90 of one inference) come with a bootstrap confidence interval of the relative
change: the per-run samples of each side are resampled with replacement, the statistic recomputed on each
resample, and the interval read from the percentiles of new/old - 1. A change is flagged only when the interval
excludes zero *and* the change is past the threshold: noise alone then almost never raises an alarm (the
one-sided error of a 95% interval is 2.5%, and the threshold removes most of that), while a shift of several
times the threshold is caught. The model's file size is exact (its interval is the point itself). Metrics
measured once per run (init, peak RSS, tok/s) have no samples to resample: they are shown, not judged.

The mean latency is shown, not judged: it follows the rare slow run (a preempted one), and its bootstrap
interval is then too narrow at these sample sizes. Measured on 300 seeds of 60 runs a side from one lognormal
distribution with 3% of runs 3x slower: the mean raised a false alarm 6% of the time, p50 and p90 1-2%, under
the nominal 2.5% (tests/device/test_compare.py keeps that bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .html_report import load

# latency metric -> its statistic over per-run samples (one array, or resamples along axis 1); higher is worse
SAMPLED = {
    "p50_ms": lambda a, axis=None: np.percentile(a, 50, axis=axis),
    "p90_ms": lambda a, axis=None: np.percentile(a, 90, axis=axis),
}
SINGLE: dict[str, tuple[Callable[[dict], float | None], int, bool]] = {
    # metric -> (value of a cell, +1 if higher is worse / -1 if better, exact: judged without samples)
    "file_size_mb": (lambda c: c["size_bytes"] / 1e6 if c.get("size_bytes") else None, +1, True),
    "mean_ms": (lambda c: (_bench(c).get("latency_ms") or {}).get("mean") or _mean_of_samples(c), +1, False),
    "init_ms": (lambda c: _bench(c).get("init_ms"), +1, False),
    "peak_rss_mb": (lambda c: (_bench(c).get("peak_rss_bytes") or 0) / 2**20 or None, +1, False),
    "model_rss_mb": (lambda c: (_bench(c).get("model_rss_bytes") or 0) / 2**20 or None, +1, False),
    "decode_tok_s": (lambda c: (_bench(c).get("generation") or {}).get("decode_tok_s"), -1, False),
    "prefill_tok_s": (lambda c: (_bench(c).get("generation") or {}).get("prefill_tok_s"), -1, False),
}


def _bench(cell: dict) -> dict:
    return ((cell.get("entry") or {}).get("bench") or {}) if cell.get("ok") else {}


def _mean_of_samples(cell: dict) -> float | None:
    samples = (_bench(cell).get("latency_ms") or {}).get("samples")
    return float(np.mean(samples)) if samples else None


@dataclass(frozen=True)
class Change:
    cell: str
    metric: str
    old: float
    new: float
    change_pct: float
    low_pct: float | None      # the confidence interval of change_pct; None: no samples
    high_pct: float | None
    verdict: str               # regression | improvement | no change | not judged

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def bootstrap_change(old: np.ndarray, new: np.ndarray, stat, *, resamples: int = 2000, confidence: float = 0.95,
                     rng: np.random.Generator) -> tuple[float, float, float]:
    """(change %, low %, high %) of stat(new) / stat(old) - 1, with a percentile bootstrap interval."""
    old, new = np.asarray(old, np.float64), np.asarray(new, np.float64)
    point = 100.0 * (float(stat(new)) / float(stat(old)) - 1.0)
    so = stat(old[rng.integers(0, len(old), (resamples, len(old)))], axis=1)  # (resamples,)
    sn = stat(new[rng.integers(0, len(new), (resamples, len(new)))], axis=1)  # (resamples,)
    tail = 100.0 * (1.0 - confidence) / 2
    low, high = np.percentile(100.0 * (sn / so - 1.0), [tail, 100.0 - tail])
    return point, float(low), float(high)


def verdict(change: float, low: float | None, high: float | None, threshold_pct: float, worse: int) -> str:
    if low is None or high is None:
        return "not judged"
    if worse * change > threshold_pct and (low > 0 if worse > 0 else high < 0):
        return "regression"
    if -worse * change > threshold_pct and (high < 0 if worse > 0 else low > 0):
        return "improvement"
    return "no change"


def compare_cells(old: dict, new: dict, name: str, *, threshold_pct: float, rng: np.random.Generator,
                  resamples: int = 2000, confidence: float = 0.95) -> list[Change]:
    """Every metric both cells have."""
    out = []
    old_s = np.asarray((_bench(old).get("latency_ms") or {}).get("samples") or [], np.float64)
    new_s = np.asarray((_bench(new).get("latency_ms") or {}).get("samples") or [], np.float64)
    if len(old_s) >= 2 and len(new_s) >= 2:
        for metric, stat in SAMPLED.items():
            change, low, high = bootstrap_change(old_s, new_s, stat, resamples=resamples, confidence=confidence,
                                                 rng=rng)
            out.append(Change(name, metric, float(stat(old_s)), float(stat(new_s)), change, low, high,
                              verdict(change, low, high, threshold_pct, +1)))
    for metric, (read, worse, exact) in SINGLE.items():
        a, b = read(old), read(new)
        if a is None or b is None or a == 0:
            continue
        change = 100.0 * (b / a - 1.0)
        low = high = change if exact else None
        out.append(Change(name, metric, float(a), float(b), change, low, high,
                          verdict(change, low, high, threshold_pct, worse)))
    return out


def pair_cells(old_cells: list[dict], new_cells: list[dict]) -> list[tuple[str, dict, dict]]:
    """(name, old, new) for cells with the same variant and device; when the two sides hold one variant each
    under different names (a bundle renamed between runs), cells pair by device alone."""
    old_ok = {(c["variant"], c["device"]): c for c in old_cells if c.get("ok")}
    new_ok = {(c["variant"], c["device"]): c for c in new_cells if c.get("ok")}
    pairs = [(f"{v} @ {d}", old_ok[(v, d)], c) for (v, d), c in new_ok.items() if (v, d) in old_ok]
    if not pairs and len({v for v, _ in old_ok}) == 1 and len({v for v, _ in new_ok}) == 1:
        old_by_device = {d: c for (_, d), c in old_ok.items()}
        pairs = [(f"{v} @ {d}", old_by_device[d], c) for (v, d), c in new_ok.items() if d in old_by_device]
    return pairs


def compare_files(old: str | Path, new: str | Path, *, threshold_pct: float = 5.0, seed: int = 0,
                  resamples: int = 2000, confidence: float = 0.95) -> list[Change]:
    rng = np.random.default_rng(seed)
    _, old_cells = load([old])
    _, new_cells = load([new])
    changes = []
    for name, a, b in pair_cells(old_cells, new_cells):
        changes += compare_cells(a, b, name, threshold_pct=threshold_pct, rng=rng, resamples=resamples,
                                 confidence=confidence)
    return changes


def format_changes(changes: list[Change]) -> str:
    header = ["variant @ device", "metric", "old", "new", "change", "interval", "verdict"]
    rows = [[c.cell, c.metric, f"{c.old:.4g}", f"{c.new:.4g}", f"{c.change_pct:+.1f}%",
             "-" if c.low_pct is None else f"[{c.low_pct:+.1f}%, {c.high_pct:+.1f}%]",
             c.verdict.upper() if c.verdict == "regression" else c.verdict] for c in changes]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + ["  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows])
