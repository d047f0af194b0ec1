"""Budgets: the limits a model must meet on each device, read from a TOML file, and the verdict on measurements.

    # budget.toml: every key is optional; [device."TARGET"] tables override the global limits for one device
    max_file_size_mb = 30           # model.tflite
    max_peak_rss_mb = 400           # the benchmark process's peak resident memory (VmHWM)
    max_model_rss_mb = 300          # the model's share of it: peak minus the runner's memory before loading it
    max_p90_ms = 25                 # latency of one inference (GPT-2: one decode step)
    max_p99_ms = 40
    max_init_ms = 800               # interpreter creation and allocation
    min_decode_tok_s = 20           # GPT-2 only
    min_prefill_tok_s = 200         # GPT-2 only
    max_accuracy_drop_pct = 1.0     # classifiers: accuracy points lost against the fp32 variant (needs --data)
    max_perplexity_increase_pct = 5 # GPT-2: perplexity increase against the fp32 variant, percent (needs --data)
    min_agreement_pct = 95          # top-1 (GPT-2: greedy next-token) agreement with the fp32 variant (needs --data)

    [device."adb:R58M12345"]
    max_p90_ms = 60

A limit whose metric was not measured fails ("not measured"): a budget that cannot be checked does not pass.
Limits that only mean something for one kind of model (tok/s and perplexity for GPT-2, accuracy for classifiers)
do not apply to the others, so one budget can cover a check of both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liteship.errors import LiteshipError


class BudgetError(LiteshipError):
    """A budget file that cannot be read: bad TOML, an unknown key, a value that is not a number."""


@dataclass(frozen=True)
class Limit:
    metric: str    # the measurement it reads (see measurements())
    bound: str     # "max": the measured value must be <= the limit; "min": >= the limit
    unit: str
    needs: str     # what to do when it is not measured
    only: str | None = None  # "gpt2": GPT-2 bundles only; "classifier": every other family; None: all

    def applies_to(self, family: str) -> bool:
        if self.only is None:
            return True
        return (family == "gpt2") == (self.only == "gpt2")


# budget key -> Limit. The one table of limit kinds: parsing, judging and the report all read it.
LIMITS: dict[str, Limit] = {
    "max_file_size_mb": Limit("file_size_mb", "max", "MB", "a bundle with model.tflite"),
    "max_peak_rss_mb": Limit("peak_rss_mb", "max", "MiB", "a benchmark that reports peak memory"),
    "max_model_rss_mb": Limit("model_rss_mb", "max", "MiB", "a benchmark that reports the model's memory share"),
    "max_p90_ms": Limit("p90_ms", "max", "ms", "a benchmark"),
    "max_p99_ms": Limit("p99_ms", "max", "ms", "a benchmark"),
    "max_init_ms": Limit("init_ms", "max", "ms", "the python runner (benchmark_model reports it too)"),
    "min_decode_tok_s": Limit("decode_tok_s", "min", "tok/s", "the python runner", "gpt2"),
    "min_prefill_tok_s": Limit("prefill_tok_s", "min", "tok/s", "the python runner", "gpt2"),
    "max_accuracy_drop_pct": Limit("accuracy_drop_pct", "max", "points", "--data and an fp32 variant", "classifier"),
    "max_perplexity_increase_pct": Limit("perplexity_increase_pct", "max", "%", "--data and an fp32 variant", "gpt2"),
    "min_agreement_pct": Limit("agreement_pct", "min", "%", "--data and an fp32 variant"),
}
DEVICE_TABLE = "device"


@dataclass(frozen=True)
class Budget:
    path: str
    limits: dict[str, float]                 # global
    devices: dict[str, dict[str, float]]     # target spec -> its overrides

    def limits_for(self, device: str, family: str | None = None) -> dict[str, float]:
        """The global limits with the device's own on top, in LIMITS order; with ``family``, only those that
        apply to it. ``device`` may carry spec parameters (``ssh:pi?python=...``): the table of ``ssh:pi``
        applies unless one is written for the whole spec."""
        from .base import base_spec

        own = self.devices.get(device, self.devices.get(base_spec(device), {}))
        merged = {**self.limits, **own}
        return {key: merged[key] for key in LIMITS if key in merged
                and (family is None or LIMITS[key].applies_to(family))}

    def as_dict(self) -> dict:
        return {"path": self.path, "limits": self.limits, "devices": self.devices}


def _toml():
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # 3.9 and 3.10: the same parser as a package (pyproject: tomli; python < 3.11)
        import tomli as tomllib
    return tomllib


def _limits(table: dict, where: str, path: Path) -> dict[str, float]:
    out = {}
    for key, value in table.items():
        if key not in LIMITS:
            raise BudgetError(f"{path}: unknown key {key!r}{where}; known limits: {', '.join(LIMITS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise BudgetError(f"{path}: {key}{where} must be a number >= 0, not {value!r}")
        out[key] = float(value)
    return out


def parse_budget(text: str, path: str | Path = "<budget>") -> Budget:
    path = Path(path)
    try:
        data = _toml().loads(text)
    except Exception as exc:  # tomllib.TOMLDecodeError (tomli's on older Pythons)
        raise BudgetError(f"{path}: not valid TOML ({exc})") from None
    devices_table = data.pop(DEVICE_TABLE, {})
    if not isinstance(devices_table, dict):
        raise BudgetError(f"{path}: {DEVICE_TABLE!r} must be a table of [{DEVICE_TABLE}.\"TARGET\"] tables")
    devices = {}
    for spec, table in devices_table.items():
        if not isinstance(table, dict):
            raise BudgetError(f"{path}: {DEVICE_TABLE}.{spec!r} must be a table of limits, not {table!r}")
        devices[spec] = _limits(table, f" in [{DEVICE_TABLE}.\"{spec}\"]", path)
    return Budget(str(path), _limits(data, "", path), devices)


def load_budget(path: str | Path) -> Budget:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BudgetError(f"{path}: cannot read the budget ({getattr(exc, 'strerror', None) or exc})") from None
    return parse_budget(text, path)


def measurements(entry: dict | None, evaluation: dict | None, size_bytes: int | None) -> dict[str, float | None]:
    """The metrics limits read, from one device's bench entry (liteship.device-bench/1 ``results[i]``), the
    variant's evaluation against fp32 (see device/check.py) and the model's file size. None = not measured."""
    bench = (entry or {}).get("bench") or {}
    latency = bench.get("latency_ms") or {}
    generation = bench.get("generation") or {}
    evaluation = evaluation or {}
    rss, model_rss = bench.get("peak_rss_bytes"), bench.get("model_rss_bytes")
    return {
        "file_size_mb": None if size_bytes is None else size_bytes / 1e6,
        "peak_rss_mb": None if rss is None else rss / 2**20,
        "model_rss_mb": None if model_rss is None else model_rss / 2**20,
        "p90_ms": latency.get("p90"),
        "p99_ms": latency.get("p99"),
        "init_ms": bench.get("init_ms"),
        "decode_tok_s": generation.get("decode_tok_s"),
        "prefill_tok_s": generation.get("prefill_tok_s"),
        "accuracy_drop_pct": evaluation.get("accuracy_drop_pct"),
        "perplexity_increase_pct": evaluation.get("perplexity_increase_pct"),
        "agreement_pct": evaluation.get("agreement_pct"),
    }


@dataclass(frozen=True)
class Verdict:
    key: str
    limit: float
    measured: float | None
    passed: bool
    margin: float | None   # headroom in the limit's unit: > 0 inside the budget, < 0 over it
    note: str = ""

    def as_dict(self) -> dict:
        return {"key": self.key, "limit": self.limit, "measured": self.measured, "passed": self.passed,
                "margin": self.margin, "note": self.note}


def judge(limits: dict[str, float], measured: dict[str, Any], *, missing_note: str = "") -> list[Verdict]:
    """One verdict per limit; a limit whose metric is None fails as "not measured" (``missing_note`` says why)."""
    verdicts = []
    for key, limit in limits.items():
        spec = LIMITS[key]
        value = measured.get(spec.metric)
        if value is None:
            verdicts.append(Verdict(key, limit, None, False, None,
                                    missing_note or f"not measured (needs {spec.needs})"))
            continue
        margin = limit - value if spec.bound == "max" else value - limit
        verdicts.append(Verdict(key, limit, float(value), margin >= 0, margin))
    return verdicts
