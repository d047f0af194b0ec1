"""Benchmarks a bundle where it runs: init, first inference, warm-up, timed runs, peak memory.

This is what a board runs (``python3 -m liteship.runtime.bench BUNDLE --json``, or the same through the runtime
zipapp that ``liteship device`` pushes), so it needs only numpy and an interpreter. Results follow the
``liteship.bench/1`` schema in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time

import numpy as np

from liteship.errors import LiteshipError, RuntimeLiteshipError
from liteship.runtime.bundle import Bundle
from liteship.runtime.files import write_json_atomic
from liteship.runtime.interpreter import create_interpreter, resolve_backend
from liteship.runtime.memory import peak_rss_bytes
from liteship.units import memory_text, size_text

SCHEMA = "liteship.bench/1"
# For GPT-2 the latency loop times one decode step: the call a chat app makes once per token.
PREFERRED_SIGNATURES = ("decode", "serving_default")
# A decode step's cost grows with the cache slots it attends over, and decode leaves that count open: the latency
# loop times a step at this many filled slots (--context), the same default as the generation block's decode.
DEFAULT_DECODE_CONTEXT = 256


def default_signature(keys: list[str]) -> str | None:
    """The signature timed when none is asked for (here and by benchmark_model on a device): decode, else
    serving_default, else the first."""
    return next((k for k in PREFERRED_SIGNATURES if k in keys), keys[0] if keys else None)


def utc_timestamp() -> str:
    """Now in UTC to the second, as every liteship record writes it: ``2026-12-01T18:40:00Z``."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def rss_figures(peak: int | None, baseline: int | None) -> dict:
    """The one memory record of a run: ``peak_rss_bytes`` (the process's peak resident memory),
    ``baseline_rss_bytes`` (its peak before the model was loaded: the runner itself) and ``model_rss_bytes``
    (peak minus baseline: the model's own share, like benchmark_model's "memory footprint delta"). None where
    unknown."""
    model = peak - baseline if peak is not None and baseline is not None else None
    return {"peak_rss_bytes": peak, "baseline_rss_bytes": baseline,
            "model_rss_bytes": None if model is None else max(model, 0)}


def rss_text(result: dict) -> str:
    """``123.4 MiB (model 80.1 MiB)``: the peak, then the model's share when known."""
    peak, model = result.get("peak_rss_bytes"), result.get("model_rss_bytes")
    if not peak:
        return "unknown"
    return memory_text(peak) + (f" (model {memory_text(model)})" if model is not None else "")


def host_facts() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key = line.split(":")[0].strip().lower()
                if key in ("model name", "hardware", "cpu model"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"system": platform.system(), "release": platform.release(), "machine": platform.machine(),
            "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__}


def machine_summary() -> str:
    """One line naming this machine, for benchmark reports: CPU, cores, OS, Python."""
    f = host_facts()
    return f"{f['cpu'] or f['machine']}, {f['cores']} cores, {f['system']} {f['machine']}, Python {f['python']}"


def percentiles(samples_ms: list[float]) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {
        "mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max()),
        "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
        "samples": [round(float(x), 4) for x in a],
    }


def synthetic_inputs(details: dict, seed: int = 0) -> dict:
    """Inputs of the right shape and type: values in each type's usual range; integer inputs (token ids,
    positions) are zeros, which every model accepts."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, d in details.items():
        shape = [1 if s < 0 else int(s) for s in (d.get("shape_signature") if d.get("shape_signature") is not None
                                                  and len(d.get("shape_signature")) else d["shape"])]
        dtype = np.dtype(d["dtype"])
        if dtype.kind == "f":
            inputs[name] = rng.uniform(-1, 1, size=shape).astype(dtype)
        elif dtype in (np.int8, np.uint8) and d.get("quantization", (0.0, 0))[0]:
            info = np.iinfo(dtype)
            inputs[name] = rng.integers(info.min, info.max + 1, size=shape, dtype=dtype)
        else:
            inputs[name] = np.zeros(shape, dtype=dtype)
    return inputs


def decode_inputs(details: dict, context: int, seed: int = 0) -> tuple[dict, int]:
    """(inputs, slots) for one GPT-2 decode step after ``context`` filled cache slots.

    Decode's inputs are embeds (1, E), position (1,), mask (1, slots+1) and k_i/v_i (H, slots, head_dim) with the
    slot count open (-1) in bundles that grow their cache; ``synthetic_inputs`` would make that one slot. Here the
    cache holds ``context`` slots, every one visible (mask 0), and the new token sits at position ``context``.
    Older bundles fix the slot count: then that count is the context, whatever was asked."""
    shapes = {}
    fixed = None
    for name, d in details.items():
        sig = d.get("shape_signature")
        sig = [int(s) for s in (sig if sig is not None and len(sig) else d["shape"])]
        if name.startswith(("k_", "v_")) and sig[1] >= 0:
            fixed = sig[1]
        shapes[name] = sig
    slots = fixed if fixed is not None else context
    inputs = synthetic_inputs({n: {**d, "shape_signature": [slots + 1 if n == "mask" and s < 0 else
                                                             slots if s < 0 else s for s in shapes[n]]}
                               for n, d in details.items()}, seed)
    if "mask" in inputs:
        inputs["mask"][...] = 0.0  # (1, slots+1): every filled slot and the new token itself visible
    if "position" in inputs:
        inputs["position"][...] = slots
    return inputs, slots


def benchmark(model: str | os.PathLike, *, runs: int = 50, warmup: int = 5, threads: int | None = None,
              backend: str = "auto", delegate: str | None = None, use_xnnpack: bool = True,
              signature: str | None = None, generation: bool = True, duration_s: float | None = None,
              context: int = DEFAULT_DECODE_CONTEXT) -> dict:
    """Times one signature of a bundle or .tflite with synthetic inputs. GPT-2 bundles also get a
    ``generation`` block (prefill and decode tok/s) from liteship.runtime.generate.

    A GPT-2 decode step is timed after ``context`` filled cache slots (at most the bundle's max_context - 1,
    or the slot count an older bundle fixes); the result's ``decode_context`` says which, and the generation
    block's decode rate is measured at the same context."""
    if runs < 1 or warmup < 0:
        raise RuntimeLiteshipError("--runs must be >= 1 and --warmup >= 0")
    if context < 1:
        raise RuntimeLiteshipError(f"--context must be at least 1, not {context}")
    resolve_backend(backend)  # the runner's own memory (the interpreter package) belongs to the baseline
    baseline_rss = peak_rss_bytes()  # before the model is read: what follows is the model's share
    bundle = Bundle.open(model)
    t0 = time.perf_counter()
    interp = create_interpreter(bundle.model_path, backend=backend, num_threads=threads, delegate=delegate,
                                use_xnnpack=use_xnnpack)
    keys = list(interp.get_signature_list())
    if signature is None:
        signature = default_signature(keys)
    if signature is None:
        raise RuntimeLiteshipError(f"{bundle.model_path}: the model has no signatures to run")
    if signature not in keys:
        raise RuntimeLiteshipError(f"signature {signature!r} not in the model; it has: {', '.join(keys)}")
    runner = interp.get_signature_runner(signature)
    init_ms = (time.perf_counter() - t0) * 1e3
    decode_context = None
    if bundle.family == "gpt2" and signature == "decode":
        max_context = int(bundle.config.get("max_context", context + 1))
        context = min(context, max_context - 1)  # the new token's position must stay inside the context
        inputs, decode_context = decode_inputs(runner.get_input_details(), context)
    else:
        inputs = synthetic_inputs(runner.get_input_details())

    t0 = time.perf_counter()
    runner(**inputs)
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        runner(**inputs)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        runner(**inputs)
        samples.append((time.perf_counter_ns() - t0) / 1e6)

    result = {
        "schema": SCHEMA,
        "model": {"path": str(bundle.model_path), "size_bytes": bundle.model_path.stat().st_size,
                  "sha256": bundle.sha256(), "family": bundle.family, "quantization": bundle.quantization},
        "runtime": {"backend": interp.liteship_backend, "threads": threads, "delegate": delegate,
                    "xnnpack": use_xnnpack},
        "signature": signature,
        "decode_context": decode_context,  # GPT-2 decode: filled cache slots each timed step attends over
        "init_ms": init_ms,
        "first_inference_ms": first_ms,
        "warmup_runs": warmup,
        "runs": runs,
        "latency_ms": percentiles(samples),
    }
    if duration_s:  # throughput and temperature over time
        from functools import partial

        from liteship.runtime.sustained import sustained_runs
        result["sustained"] = sustained_runs(partial(runner, **inputs), duration_s)
    del runner, interp
    if generation and bundle.family == "gpt2":
        from liteship.runtime.generation_bench import benchmark_generation

        contexts = [c for c in (32, 128, 512, 1024) if c < int(bundle.config.get("max_context", 0))]  # report's plot
        result["generation"] = benchmark_generation(bundle, threads=threads, backend=backend,  # already verified
                                                    context=decode_context or context, contexts=contexts)
        result["generation"].pop("peak_rss_bytes", None)  # one peak per run: the one below covers generation too
    result.update(rss_figures(peak_rss_bytes(), baseline_rss))
    result["host"] = host_facts()
    result["created"] = utc_timestamp()
    return result


def format_table(result: dict) -> str:
    lat = result["latency_ms"]
    rows = [
        ("model", f"{result['model']['path']} ({size_text(result['model']['size_bytes'])}, "
                  f"{result['model']['quantization']})"),
        ("runtime", f"{result['runtime']['backend']}, threads={result['runtime']['threads'] or 'default'}"
                    f"{', delegate=' + result['runtime']['delegate'] if result['runtime']['delegate'] else ''}"),
        ("signature", result["signature"] + (f" at {result['decode_context']} filled cache slots"
                                             if result.get("decode_context") else "")),
        ("init", f"{result['init_ms']:.2f} ms"),
        ("first inference", f"{result['first_inference_ms']:.3f} ms"),
        (f"latency ({result['runs']} runs)", f"mean {lat['mean']:.3f} ± {lat['std']:.3f} ms, p50 {lat['p50']:.3f}, "
                                            f"p90 {lat['p90']:.3f}, p99 {lat['p99']:.3f}"),
        ("peak RSS", rss_text(result)),
    ]
    gen = result.get("generation")
    if gen:
        rows.append(("prefill", f"{gen.get('prefill_tok_s', float('nan')):.1f} tok/s"))
        rows.append(("decode", f"{gen.get('decode_tok_s', float('nan')):.1f} tok/s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="liteship-bench", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="bundle folder, .zip/.tar, or .tflite")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--delegate", default=None)
    parser.add_argument("--no-xnnpack", action="store_true")
    parser.add_argument("--signature", default=None)
    parser.add_argument("--no-generation", action="store_true", help="skip the GPT-2 tok/s measurement")
    parser.add_argument("--duration", type=float, default=None, help="also run back to back for SECONDS")
    parser.add_argument("--context", type=int, default=DEFAULT_DECODE_CONTEXT,
                        help="GPT-2: time decode after this many filled cache slots (default %(default)s)")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="write JSON to PATH (or stdout with no PATH)")
    args = parser.parse_args(argv)
    try:
        result = benchmark(args.model, runs=args.runs, warmup=args.warmup, threads=args.threads,
                           backend=args.backend, delegate=args.delegate, use_xnnpack=not args.no_xnnpack,
                           signature=args.signature, generation=not args.no_generation, duration_s=args.duration,
                           context=args.context)
    except LiteshipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json == "-":
        print(json.dumps(result))
    elif args.json:
        write_json_atomic(args.json, result)
        print(format_table(result))
    else:
        print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
