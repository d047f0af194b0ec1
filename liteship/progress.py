"""Progress for long steps: count, rate and ETA redrawn on one line on a terminal, a line per quarter otherwise
(logs and CI keep a readable trail). Writes to stderr; stdout stays for results."""

from __future__ import annotations

import sys
import time


class Meter:
    """``meter = Meter("calibrating", total=160, unit="images")``; call ``meter(done)`` as work completes."""

    def __init__(self, label: str, total: int, *, unit: str = "", stream=None, min_interval_s: float = 0.2):
        self.label, self.total, self.unit = label, max(int(total), 0), unit
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.min_interval_s = min_interval_s
        self._last_draw = 0.0
        self._next_quarter = 1

    def text(self, done: int) -> str:
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 and self.total else None
        unit = f" {self.unit}" if self.unit else ""
        parts = [f"[liteship] {self.label} {done}/{self.total}{unit}", f"{rate:.1f}/s"]
        parts.append(f"ETA {eta:.0f} s" if eta is not None and done < self.total else f"{elapsed:.1f} s")
        return ", ".join(parts)

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if self.tty:
            if done >= self.total or now - self._last_draw >= self.min_interval_s:
                self._last_draw = now
                end = "\n" if done >= self.total else ""
                self.stream.write("\r\033[K" + self.text(done) + end)
                self.stream.flush()
        elif self.total and done * 4 >= self._next_quarter * self.total:
            while done * 4 >= self._next_quarter * self.total:
                self._next_quarter += 1
            self.stream.write(self.text(done) + "\n")
            self.stream.flush()
