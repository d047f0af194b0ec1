"""Progress for long steps: count, rate and ETA redrawn on one line on a terminal, a line per quarter otherwise
(logs and CI keep a readable trail). Writes to stderr; stdout stays for results."""

from __future__ import annotations

import sys
import threading
import time

# Meters of parallel work (several devices at once) share the terminal: one redraw at a time.
_DRAW = threading.Lock()
_TICKING: "list[Stages]" = []  # a stage line being redrawn; a meter or an error line ends it first


def end_stage_line() -> None:
    """Ends a stage line still being redrawn, so what comes next (a meter, ``error: ...``) has its own line."""
    for stages in list(_TICKING):
        stages.finish()


class Meter:
    """``meter = Meter("calibrating", total=160, unit="images")``; call ``meter(done)`` as work completes.

    ``scale`` shows amounts in larger units: ``Meter("pushing", total=n_bytes, unit="MB", scale=1e6)`` draws
    ``12.3/500.0 MB, 10.1 MB/s, ETA 48 s``. ``label`` may change between calls (the file being sent)."""

    def __init__(self, label: str, total: int, *, unit: str = "", scale: float = 1, stream=None,
                 min_interval_s: float = 0.2):
        self.label, self.total, self.unit, self.scale = label, max(int(total), 0), unit, scale
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.min_interval_s = min_interval_s
        self._last_draw = 0.0
        self._next_quarter = 1
        self._finished = False

    def _amount(self, n: float) -> str:
        return str(int(n)) if self.scale == 1 else f"{n / self.scale:.1f}"

    def text(self, done: int) -> str:
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 and self.total else None
        unit = f" {self.unit}" if self.unit else ""
        per_s = f"{rate / self.scale:.1f}{unit}/s" if self.scale != 1 else f"{rate:.1f}/s"
        parts = [f"[liteship] {self.label} {self._amount(done)}/{self._amount(self.total)}{unit}", per_s]
        parts.append(f"ETA {eta:.0f} s" if eta is not None and done < self.total else f"{elapsed:.1f} s")
        return ", ".join(parts)

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if self._finished:
            return
        self._finished = done >= self.total
        if self.tty:
            end_stage_line()
            if done >= self.total or now - self._last_draw >= self.min_interval_s:
                self._last_draw = now
                end = "\n" if done >= self.total else ""
                with _DRAW:
                    self.stream.write("\r\033[K" + self.text(done) + end)
                    self.stream.flush()
        elif self.total and done * 4 >= self._next_quarter * self.total:
            while done * 4 >= self._next_quarter * self.total:
                self._next_quarter += 1
            with _DRAW:
                self.stream.write(self.text(done) + "\n")
                self.stream.flush()


class Stages:
    """``say = Stages(); say("converting to TFLite")``: one call per stage of a long step whose work cannot be
    counted (TensorFlow's converter). On a terminal the stage's line shows its elapsed time, redrawn every
    ``interval_s``, and keeps the time it took when the next stage (or ``finish()``) comes; elsewhere each stage
    is one line as it starts. A line that is not a stage (``say(message, stage=False)``) is printed whole."""

    def __init__(self, *, prefix: str = "[liteship] ", stream=None, interval_s: float = 1.0):
        self.prefix, self.interval_s = prefix, interval_s
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._label: str | None = None
        self._started = 0.0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def _line(self) -> str:
        return f"{self.prefix}{self._label} ({time.monotonic() - self._started:.0f} s)"

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            with _DRAW:
                if not stop.is_set():
                    self.stream.write("\r\033[K" + self._line())
                    self.stream.flush()

    def __call__(self, message: str, *, stage: bool = True) -> None:
        self.finish()
        if not self.tty or not stage:
            with _DRAW:
                self.stream.write(self.prefix + message + "\n")
                self.stream.flush()
            return
        self._label, self._started = message, time.monotonic()
        with _DRAW:
            self.stream.write(self.prefix + message)
            self.stream.flush()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, args=(self._stop,), name="liteship-stage", daemon=True)
        self._ticker.start()
        _TICKING.append(self)

    def finish(self) -> None:
        """Ends the current stage's line (on a terminal, with the time it took)."""
        if self._ticker is None:
            return
        self._stop.set()
        self._ticker.join()
        self._ticker = None
        if self in _TICKING:
            _TICKING.remove(self)
        try:
            with _DRAW:
                self.stream.write(f"\r\033[K{self.prefix}{self._label} ({time.monotonic() - self._started:.1f} s)\n")
                self.stream.flush()
        except (OSError, ValueError):  # stderr already gone: nothing to end
            pass
        self._label = None
