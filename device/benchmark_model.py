"""Read the log of TensorFlow Lite's / LiteRT's official ``benchmark_model`` binary into liteship.bench/1 fields.

The format comes from TensorFlow's sources (tensorflow/lite/tools/benchmark/benchmark_model.cc,
benchmark_tflite_model.cc and tensorflow/core/util/stats_calculator.h ``Stat::OutputToStream``); LiteRT's
benchmark_litert_model shares the same BenchmarkModel base and log lines. Lines look like (after an optional
``INFO: `` or ``INFO: [file.cc:12] `` prefix)::

    Graph: [/data/local/tmp/model.tflite]
    Signature to run: [serving_default]
    The input model file size (MB): 4.27
    Initialized session in 3.63ms.
    Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
    count=28 first=27432 curr=17163 min=16888 max=27432 avg=18080.4 std=1936        <- warm-up runs, in us
    Running benchmark for at least 50 iterations and at least 1 seconds but ...
    count=58 first=17178 curr=17147 min=16880 max=18118 avg=17223.6 std=172         <- timed runs, in us
    Inference timings in us: Init: 3630, First inference: 27432, Warmup (avg): 18080.4, Inference (avg): 17223.6
    Memory footprint delta from the start of the tool (MB): init=6.23828 overall=9.67578
    Overall peak memory footprint (MB) via periodic monitoring: 12.3                   <- --report_peak_memory_footprint
    - VmRSS              : 30 MB

Variants handled: numbers in scientific notation (``avg=1.2e+06``, C++ ostream's default for large doubles);
``count=N curr=X(all same)`` and ``count=0`` from Stat; older releases' ``Average inference timings in us: Warmup:
..., Init: ..., Inference: ...`` and ``Peak memory footprint (MB): init=... overall=...`` (despite its name the delta from the tool's start); memory lines
missing altogether (platforms without memory info) -> None. Multi-signature models run one signature per
invocation (``--signature_to_run_for``), which the log names; a model with several signatures and no flag logs an
ERROR listing them, returned in ``errors`` with ``signatures_available``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
MIB = 1024 * 1024  # the tool divides kB by 1024.0 and calls it MB

_STAT = re.compile(r"\bcount=(?P<count>\d+)(?P<rest>.*)$")
_FIELD = re.compile(rf"\b(first|curr|min|max|avg|std)=({_NUM})")
_PATTERNS = {
    "init_ms": re.compile(rf"Initialized session in ({_NUM})\s*ms"),
    "model_mb": re.compile(rf"The input model file size \(MB\):\s*({_NUM})"),
    "graph": re.compile(r"\bGraph:\s*\[(.*)\]"),
    "signature": re.compile(r"Signature to run:\s*\[(.*)\]"),
    "threads": re.compile(r"Num threads:\s*\[(-?\d+)\]"),
    "running": re.compile(r"Running benchmark for at least (\d+) iterations"),
    "timings": re.compile(r"Inference timings in us:(.*)$"),
    "old_timings": re.compile(r"Average inference timings in us:(.*)$"),
    "delta": re.compile(
        rf"Memory footprint delta from the start of the tool \(MB\):\s*init=({_NUM})\s+overall=({_NUM})"
    ),
    "old_peak": re.compile(rf"Peak memory footprint \(MB\):\s*init=({_NUM})\s+overall=({_NUM})"),
    "peak": re.compile(rf"[Pp]eak memory footprint \(MB\) via periodic monitoring:\s*({_NUM})"),
    "vmrss": re.compile(rf"VmRSS\s*:\s*({_NUM})\s*MB"),
    "signature_key": re.compile(r"#> Signature key:\s*(\S+)"),
    "unconsumed": re.compile(r"Unconsumed cmdline flags:\s*(.*)$"),
    "error": re.compile(r"^(?:ERROR|E\d{4}|F\d{4})\b[: ]"),
}
_TIMING_FIELD = re.compile(rf"(Init|First inference|Warmup \(avg\)|Inference \(avg\)|Warmup|Inference):\s*({_NUM})")


# Every flag the official binary accepts, with its type: BenchmarkModel::GetFlags (benchmark_model.cc),
# BenchmarkTfLiteModel::GetFlags (benchmark_tflite_model.cc) and the delegate providers' CreateFlags
# (tools/delegates/default_execution_provider.cc, xnnpack_, gpu_, nnapi_, hexagon_, external_delegate_provider.cc),
# as of TensorFlow 2.16 / LiteRT 1.x. The binary WARNs about a flag it does not know and runs without it, so
# liteship refuses one here instead (and treats that warning in a log as a failed run).
BENCHMARK_MODEL_FLAGS: dict[str, type] = {
    # benchmark_model.cc
    "num_runs": int, "min_secs": float, "max_secs": float, "run_delay": float, "run_frequency": float,
    "num_threads": int, "use_caching": bool, "benchmark_name": str, "output_prefix": str, "warmup_runs": int,
    "warmup_min_secs": float, "verbose": bool, "dry_run": bool, "report_peak_memory_footprint": bool,
    "memory_footprint_check_interval_ms": int,
    # benchmark_tflite_model.cc
    "graph": str, "signature_to_run_for": str, "list_signatures": bool, "input_layer": str,
    "input_layer_shape": str, "input_layer_value_range": str, "input_layer_value_files": str, "allow_fp16": bool,
    "require_full_delegation": bool, "enable_op_profiling": bool, "op_profiling_output_mode": str,
    "op_profiling_output_file": str, "max_profiling_buffer_entries": int,
    "allow_dynamic_profiling_buffer_increase": bool, "profiling_output_csv_file": str,
    "print_preinvoke_state": bool, "print_postinvoke_state": bool, "release_dynamic_tensors": bool,
    "optimize_memory_for_large_tensors": int, "disable_delegate_clustering": bool,
    "enable_builtin_cast_constant_cache": bool, "output_filepath": str, "tensor_name_display_length": int,
    "tensor_type_display_length": int, "alloc_type_display_length": int,
    # delegate providers
    "help": bool, "max_delegated_partitions": int, "min_nodes_per_partition": int, "delegate_serialize_dir": str,
    "delegate_serialize_token": str, "first_delegate_node_index": int, "last_delegate_node_index": int,
    "use_xnnpack": bool, "xnnpack_force_fp16": bool, "use_gpu": bool, "gpu_precision_loss_allowed": bool,
    "gpu_experimental_enable_quant": bool, "gpu_backend": str, "use_nnapi": bool, "nnapi_accelerator_name": str,
    "nnapi_execution_preference": str, "disable_nnapi_cpu": bool, "nnapi_allow_fp16": bool, "use_hexagon": bool,
    "hexagon_profiling": bool, "external_delegate_path": str, "external_delegate_options": str,
}


def check_benchmark_model_flag(arg: str) -> str:
    """``--name=value`` as benchmark_model parses it, or a DeviceError naming what is wrong with ``arg``."""
    from liteship.errors import DeviceError

    match = re.fullmatch(r"--([a-z0-9_]+)=(.*)", arg, flags=re.S)
    if not match:
        raise DeviceError(f"--benchmark-arg {arg!r}: write --name=value, as benchmark_model takes its flags")
    name, value = match.groups()
    kind = BENCHMARK_MODEL_FLAGS.get(name)
    if kind is None:
        raise DeviceError(f"--benchmark-arg {arg!r}: benchmark_model has no flag --{name} (it would ignore it)")
    ok = {bool: lambda v: v in ("true", "false", "1", "0"),
          int: lambda v: re.fullmatch(r"[-+]?\d+", v) is not None,
          float: lambda v: re.fullmatch(_NUM, v) is not None,
          str: lambda v: True}[kind](value)
    if not ok:
        raise DeviceError(f"--benchmark-arg {arg!r}: --{name} takes a {kind.__name__}")
    return arg


# --delegate NAME -> the flag benchmark_model takes for it (tensorflow/lite/tools/delegates/*_delegate_provider.cc).
DELEGATE_FLAGS = {
    "xnnpack": "--use_xnnpack=true",
    "gpu": "--use_gpu=true",
    "nnapi": "--use_nnapi=true",
    "hexagon": "--use_hexagon=true",
}


def benchmark_model_argv(
    binary: str,
    graph: str,
    *,
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    signature: str | None = None,
    delegate: str | None = None,
    peak_memory: bool = True,
    op_profiling: bool = False,
    inputs: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The command line for benchmark_model that does exactly ``warmup`` + ``runs`` runs: the one builder, the one
    ``liteship bench --benchmark-binary`` runs.

    The tool's defaults keep running for ``warmup_min_secs`` (0.5 s) and ``min_secs`` (1 s) beyond the counts; both
    are set to 0 so the counts mean what they say. ``--report_peak_memory_footprint`` samples memory from a thread
    every 50 ms, which costs a little speed on small cores: pass ``peak_memory=False`` for pure latency runs.
    ``op_profiling`` adds ``--enable_op_profiling`` (per-op times, summed by op type in the log); ``extra`` are the
    user's own ``--name=value`` flags, checked against the binary's flag list and put last, so they win.
    """
    argv = [binary, f"--graph={graph}", f"--num_runs={runs}", f"--warmup_runs={warmup}", "--min_secs=0",
            "--warmup_min_secs=0"]
    if delegate:
        argv.append(DELEGATE_FLAGS[delegate])  # BenchSettings refused any other name up front
    if threads is not None:
        argv.append(f"--num_threads={threads}")
    if signature:
        argv.append(f"--signature_to_run_for={signature}")
    if peak_memory:
        argv.append("--report_peak_memory_footprint=true")
    if op_profiling:
        argv.append("--enable_op_profiling=true")
    argv += list(inputs)  # --input_layer* from gpt2_phases
    argv += [check_benchmark_model_flag(arg) for arg in extra]
    for arg in argv[1:]:
        check_benchmark_model_flag(arg)
    return argv


DEFAULT_CONTEXTS = (128, 512, 1024)  # cache slots a GPT-2 decode step is timed at (capped below max_context)


@dataclass(frozen=True)
class Phase:
    """One benchmark_model invocation of a GPT-2 bundle: a signature at a stated context, its inputs spelled out."""

    name: str               # "prefill" or "decode"
    signature: str
    tokens: int             # tokens one call handles: prefill_len, or 1 for a decode step
    context: int            # cache slots the call attends over
    input_flags: tuple[str, ...]


def gpt2_phases(model_path: str | Path, config: dict, contexts: tuple[int, ...] = DEFAULT_CONTEXTS) -> list[Phase]:
    """Prefill, then one decode step per context, for a GPT-2 bundle (manifest ``config``: max_context C,
    prefill_len P; signature inputs as runtime/generate.py documents them).

    benchmark_model matches --input_layer to the subgraph's inputs by position (a name that differs only WARNs)
    and rejects a -1 in --input_layer_shape, so every input is listed in subgraph order with a full shape: decode's
    open cache dimension becomes the context S (k_i, v_i: [H, S, hd]) and S + 1 for the mask ([1, S + 1]); prefill's
    open ones (bundles since its cache was opened) a first chunk's one slot (k_i, v_i, cache_mask [1, 1]), its
    rows the last position, and its chunk (bundles since that was opened: embeds, positions, chunk_mask) P. Inputs
    are named by their signature names, not tensor names: --input_layer_value_range separates its items with ':',
    which tensor names like ``decode_position:0`` contain. Integer inputs get a valid value: decode's position is
    S, prefill's positions lie in [0, P). Float inputs (embeddings, mask) are filled with random numbers by the tool,
    which changes no timing.
    """
    from liteship.errors import DeviceError
    from liteship.runtime.tflite_file import read_model

    C, P = int(config["max_context"]), int(config["prefill_len"])
    model = read_model(model_path)
    signatures = {sig.key: sig for sig in model.signatures}
    missing = {"prefill", "decode"} - set(signatures)
    if missing:
        raise DeviceError(f"{model_path}: a GPT-2 bundle needs the signatures prefill and decode; "
                          f"{', '.join(sorted(missing))} missing")

    def flags(key: str, slots: int, tokens: int, ranges: dict[str, tuple[int, int]]) -> tuple[str, ...]:
        """The --input_layer* flags of one call: open dimensions filled (k_i, v_i, cache_mask: ``slots``; mask:
        ``slots`` + ``tokens``; embeds, positions, chunk_mask: ``tokens``; prefill's rows: 1, the last position, as
        generation asks), integer inputs given ``ranges``."""
        sig = signatures[key]
        subgraph = model.subgraphs[sig.subgraph]
        by_index = {index: name for name, index in sig.inputs.items()}
        names, shapes, values = [], [], []
        for index in subgraph.inputs:
            name, tensor = by_index[index], subgraph.tensors[index]
            fill = {"mask": slots + tokens, "rows": 1, "embeds": tokens, "positions": tokens,
                    "chunk_mask": tokens}.get(name, slots)
            shape = [fill if d == -1 else d for d in tensor.shape]
            names.append(name)
            shapes.append(",".join(str(d) for d in shape))
            if tensor.dtype == "int32":  # indices (positions, rows); an int8 KV cache takes any values
                lo, hi = ranges[name]
                values.append(f"{name},{lo},{hi}")
        out = [f"--input_layer={','.join(names)}", f"--input_layer_shape={':'.join(shapes)}"]
        if values:
            out.append(f"--input_layer_value_range={':'.join(values)}")
        return tuple(out)

    # Prefill of a first chunk: bundles with an open cache give it one masked slot, as the runtime does; older
    # ones hold all C.
    prefill_slots = 1 if -1 in model.subgraphs[signatures["prefill"].subgraph].tensors[
        signatures["prefill"].inputs["k_0"]].shape else C
    phases = [Phase("prefill", "prefill", P, prefill_slots,
                    flags("prefill", prefill_slots, P, {"positions": (0, P - 1), "rows": (P - 1, P - 1)}))]
    chosen = sorted({c for c in contexts if 0 < c < C} or {C - 1})
    for S in chosen:
        phases.append(Phase("decode", "decode", 1, S, flags("decode", S, 1, {"position": (S, S)})))
    return phases


def _num(text: str) -> float | None:
    value = float(text)
    return None if math.isnan(value) else value


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000.0


def _parse_stat(line: str) -> dict[str, Any] | None:
    """One ``Stat::OutputToStream`` line -> {count, first, curr, min, max, avg, std} in us (None where absent)."""
    match = _STAT.search(line)
    if not match:
        return None
    stat: dict[str, Any] = {"count": int(match["count"])}
    stat.update({name: _num(value) for name, value in _FIELD.findall(match["rest"])})
    if stat["count"] > 0 and "min" not in stat and "curr" in stat:
        # "count=N curr=X(all same)": every run took X.
        same = stat["curr"]
        stat.update(first=stat.get("first", same), min=same, max=same, avg=same, std=0.0)
    return stat


_OP_ROW = re.compile(rf"^\s*(?P<op>[A-Za-z0-9_:./ -]+?)\s+(?P<count>\d+)\s+(?P<ms>{_NUM})\s+(?P<pct>{_NUM})%\s+")


def parse_op_summary(text: str, top: int = 10) -> list[dict[str, Any]]:
    """The "Summary by node type" table --enable_op_profiling prints (profile_summarizer / StatsCalculator), for
    the regular runs when the log has one per phase -> the ``top`` op types by average time per run::

        ============================== Summary by node type ==============================
                     [Node type]    [count]    [avg ms]     [avg %]     [cdf %]   [mem KB]  [times called]
                 FULLY_CONNECTED         48       5.423     60.123%     60.123%      0.000        48
    """
    sections = text.split("Operator-wise Profiling Info for Regular Benchmark Runs")
    body = sections[-1]
    if "Summary by node type" not in body:
        return []
    rows = []
    for line in body.split("Summary by node type", 1)[1].splitlines()[1:]:
        if line.strip().startswith("[Node type]") or not line.strip():
            continue
        line = re.sub(r"^(?:INFO|WARN)\s*:\s*", "", line.strip())
        match = _OP_ROW.match(line)
        if not match:
            if rows:
                break  # the table ended
            continue
        rows.append({"op": match["op"].strip(), "count": int(match["count"]), "avg_ms": float(match["ms"]),
                     "percent": float(match["pct"])})
    return sorted(rows, key=lambda r: -r["avg_ms"])[:top]


def parse_benchmark_model_output(text: str) -> dict[str, Any]:
    """benchmark_model's log -> liteship.bench/1 fields; None wherever the log does not say.

    Returns ``init_ms``, ``first_inference_ms``, ``warmup_runs``, ``warmup_avg_ms``, ``runs``, ``latency_ms``
    (mean/std/min/max; p50/p90/p99 are None and ``samples`` is empty because the tool prints no per-run times),
    ``peak_rss_bytes``, ``memory_mb`` (the tool's own memory lines), ``model_size_bytes``, ``signature``,
    ``threads``, ``graph``, ``errors`` (ERROR lines), ``signatures_available`` (listed on a signature error),
    ``ignored_flags`` (the flags the binary warned it did not consume) and ``top_ops`` (see parse_op_summary).
    """
    found: dict[str, Any] = {}
    stats: list[dict[str, Any]] = []
    errors: list[str] = []
    signature_keys: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        body = re.sub(r"^(?:INFO|WARNING|WARN|VERBOSE)\s*:\s*(?:\[[^\]]*\]\s*)?", "", line)
        key_match = _PATTERNS["signature_key"].search(line)
        if key_match:
            signature_keys.append(key_match.group(1))
            continue
        if _PATTERNS["error"].search(line):
            errors.append(re.sub(r"^ERROR\s*:\s*", "", line))
        stat = _parse_stat(body) if body.startswith("count=") else None
        if stat is not None:
            stats.append(stat)
            continue
        for name in ("init_ms", "model_mb", "graph", "signature", "threads", "timings", "old_timings", "peak", "vmrss",
                     "unconsumed"):
            match = _PATTERNS[name].search(body)
            if match and name not in found:
                found[name] = match.group(1)
        for name in ("delta", "old_peak"):
            match = _PATTERNS[name].search(body)
            if match:
                found[name] = (_num(match.group(1)), _num(match.group(2)))

    timings: dict[str, float | None] = {}
    for key in ("timings", "old_timings"):
        if key in found:
            timings = {name: _num(value) for name, value in _TIMING_FIELD.findall(found[key])}
            break

    warmup = stats[0] if len(stats) >= 2 else None
    timed = stats[-1] if stats else None

    init_ms = _num(found["init_ms"]) if "init_ms" in found else _ms(timings.get("Init"))
    first_us = timings.get("First inference")
    if first_us is None and warmup is not None:
        first_us = warmup.get("first")
    mean_us = timings.get("Inference (avg)", timings.get("Inference"))
    if timed is not None and timed.get("avg") is not None:
        mean_us = timed["avg"] if mean_us is None else mean_us
    warmup_avg_us = timings.get("Warmup (avg)", timings.get("Warmup"))
    if warmup_avg_us is None and warmup is not None:
        warmup_avg_us = warmup.get("avg")

    latency = {
        "mean": _ms(mean_us),
        "std": _ms(timed.get("std")) if timed else None,
        "min": _ms(timed.get("min")) if timed else None,
        "max": _ms(timed.get("max")) if timed else None,
        "p50": None,
        "p90": None,
        "p99": None,
        "samples": [],
    }

    delta = found.get("delta")
    old_peak = found.get("old_peak")
    peak_mb = _num(found["peak"]) if "peak" in found else None
    if peak_mb is not None and peak_mb <= 0:
        peak_mb = None  # the monitor reports -1 (kInvalidMemUsageMB) when it could not sample
    # Older releases' "Peak memory footprint (MB): init= overall=" is the same delta from the tool's start that
    # newer ones call "Memory footprint delta" (benchmark_model.cc: GetMemoryUsage() - start_mem_usage), not a peak.
    memory = {
        "init_delta": delta[0] if delta else (old_peak[0] if old_peak else None),
        "overall_delta": delta[1] if delta else (old_peak[1] if old_peak else None),
        "peak": peak_mb,
        "rss_at_end": _num(found["vmrss"]) if "vmrss" in found else None,
    }
    model_mb = _num(found["model_mb"]) if "model_mb" in found else None

    return {
        "init_ms": init_ms,
        "first_inference_ms": _ms(first_us),
        "warmup_runs": warmup["count"] if warmup else None,
        "warmup_avg_ms": _ms(warmup_avg_us),
        "runs": timed["count"] if timed else None,
        "latency_ms": latency,
        "peak_rss_bytes": round(peak_mb * MIB) if peak_mb is not None else None,
        "memory_mb": memory,
        "model_size_bytes": round(model_mb * 1e6) if model_mb else None,  # the tool prints bytes / 1e6
        "signature": found.get("signature") or None,
        "threads": int(found["threads"]) if "threads" in found else None,
        "graph": found.get("graph") or None,
        "errors": errors,
        "signatures_available": signature_keys,
        "ignored_flags": found["unconsumed"].split() if found.get("unconsumed") else [],
        "top_ops": parse_op_summary(text),
    }
