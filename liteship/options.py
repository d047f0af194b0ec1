"""The CLI's parameter types: every numeric option of every command is checked here, one way, before any work.

A bad value is a usage error (exit 2) naming the option: ``error: Invalid value for '--top-p': ...``.
"""

from __future__ import annotations

import math
import os

import click


def max_threads() -> int:
    """Interpreter threads beyond four per core only cost memory and scheduling; 100000 exhausts the machine."""
    return max(8, 4 * (os.cpu_count() or 1))


class Number(click.ParamType):
    """A finite int or float within bounds; ``open_min``/``open_max`` exclude the bound itself."""

    def __init__(self, kind: type = float, *, min: float | None = None, max: float | None = None,
                 open_min: bool = False, open_max: bool = False, why: str = ""):
        self.kind, self.min, self.max, self.open_min, self.open_max, self.why = kind, min, max, open_min, open_max, why
        self.name = "integer" if kind is int else "float"

    def describe_range(self) -> str:
        lo = "" if self.min is None else f"{self.min} {'<' if self.open_min else '<='} "
        hi = "" if self.max is None else f" {'<' if self.open_max else '<='} {self.max}"
        return f"{lo}x{hi}"

    def get_metavar(self, param, ctx=None) -> str:  # click 8.0 passes no ctx
        return "INTEGER" if self.kind is int else "FLOAT"

    def convert(self, value, param, ctx):
        if isinstance(value, self.kind) and not isinstance(value, bool):
            number = value
        else:
            text = str(value).strip()
            try:
                number = int(text, 10) if self.kind is int else float(text)
            except ValueError:
                self.fail(f"{value!r} is not {'an integer' if self.kind is int else 'a number'}", param, ctx)
        if self.kind is float:
            if not math.isfinite(number):
                self.fail(f"{value!r} is not a finite number", param, ctx)
            if number != 0 and abs(number) < 1e-30:
                self.fail(f"{value!r} is too small to compute with (use 0 or a value >= 1e-30)", param, ctx)
        below = self.min is not None and (number <= self.min if self.open_min else number < self.min)
        above = self.max is not None and (number >= self.max if self.open_max else number > self.max)
        if below or above:
            self.fail(f"{value} is not in the range {self.describe_range()}{self.why}", param, ctx)
        return number


def Threads() -> Number:  # noqa: N802 - reads like the other click types
    return Number(int, min=1, max=max_threads(), why=f" (at most 4 per core of this machine's {os.cpu_count()})")


POSITIVE_INT = Number(int, min=1)
NON_NEGATIVE_INT = Number(int, min=0)
NON_NEGATIVE_FLOAT = Number(float, min=0)
POSITIVE_FLOAT = Number(float, min=0, open_min=True)
PROBABILITY = Number(float, min=0, max=1, open_min=True)  # top-p: a mass in (0, 1]
SEED = Number(int, min=0, max=2**32 - 1)
TEMPERATURE = Number(float, min=0, max=100)


class Utf8Text(click.ParamType):
    """Text that is valid UTF-8 (Python hands undecodable argv bytes over as surrogates)."""

    name = "text"

    def convert(self, value, param, ctx):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            self.fail(f"not valid UTF-8 text (byte {exc.start})", param, ctx)
        return value


UTF8_TEXT = Utf8Text()


class MultiValueCommand(click.Command):
    """A command whose ``multi_value`` options also take several values after one flag, as their help says:
    ``--mean 0.485 0.456 0.406`` reads as ``--mean 0.485 --mean 0.456 --mean 0.406`` (repeating still works)."""

    multi_value: tuple[str, ...] = ("--mean", "--std")

    def parse_args(self, ctx, args):
        out, current, taken = [], None, False
        for arg in args:
            if current is not None and _is_number(arg):
                out += [current, arg]
                taken = True
                continue
            if current is not None and not taken:
                out.append(current)  # a flag without a number after it: click reports or takes what follows
            current, taken = None, False
            if arg in self.multi_value:
                current = arg
                continue
            out.append(arg)
        if current is not None and not taken:
            out.append(current)
        return super().parse_args(ctx, out)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
