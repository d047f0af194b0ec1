"""BiT speed: TF Keras fp32 vs liteship fp32 / fp16 / dynamic-int8 / int8 .tflite on this machine.

    .venv/bin/python benchmarks/bench_bit.py            # BiT-M R50x1 (21843 classes) at 224x224
    .venv/bin/python benchmarks/bench_bit.py --quick    # 1000-class head at 160x160, fewer runs
    .venv/bin/python benchmarks/bench_bit.py --quick --groupnorm channelmean,matmul,reshape,keras5d   # compare lowerings
    .venv/bin/python benchmarks/bench_bit.py --interleave BUNDLE BUNDLE ...              # A/B existing bundles

Weights are random (no downloads), saved in the original BiT npz naming and converted with the real converter
(export_bit, what `liteship convert bit` runs). int8 is calibrated on scikit-image's sample photos.

Latency: TF Keras (a tf.function around the same tf_keras model) and every .tflite (ai-edge-litert, XNNPACK on)
are loaded in ONE process and invoked in turn, round after round, so that load from other processes on a shared
machine falls on all of them alike and the ratios hold even when absolute times do not. Peak RSS: each model alone
in its own process (`python -m liteship.runtime.bench` for .tflite, what a board runs). Prints a Markdown table and
writes benchmarks/results/bit_speed.md.
Targets: int8 p50 <= 0.35x TF Keras fp32 p50 in the same run; int8 file <= 0.27x fp32 file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from liteship.runtime.bench import machine_summary
from liteship.runtime.files import write_atomic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.convert.bit_fixtures: npz writer and sample images

QUANTS = ("fp32", "fp16", "dynamic-int8", "int8")
TARGET_INT8_SPEED = 0.35
TARGET_INT8_SIZE = 0.27


def keras_callable(npz: str, size: int, threads: int, groupnorm: str):
    """() -> logits of the tf_keras BiT on a fixed input, TF limited to `threads` threads."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from liteship.convert.bit.export import build_keras, load_checkpoint

    model = build_keras(load_checkpoint(npz, "R50x1"), image_size=size, groupnorm=groupnorm)
    call = tf.function(lambda x: model(x, training=False))
    x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (1, size, size, 3)).astype(np.float32))
    return lambda: call(x).numpy()


def tflite_callable(bundle: str, threads: int):
    from liteship.runtime.bench import synthetic_inputs
    from liteship.runtime.bundle import Bundle
    from liteship.runtime.interpreter import create_interpreter

    interpreter = create_interpreter(Bundle.open(bundle).model_path, num_threads=threads)
    runner = interpreter.get_signature_runner()
    inputs = synthetic_inputs(runner.get_input_details())
    return lambda: (interpreter, runner(**inputs))[1]


def interleaved(models: dict, runs: int, warmup: int) -> dict:
    """{name: callable} -> {name: {p50, p90, min}} timed round-robin in this process."""
    for call in models.values():
        for _ in range(warmup + 1):
            call()
    samples = {name: [] for name in models}
    for _ in range(runs):
        for name, call in models.items():
            t0 = time.perf_counter_ns()
            call()
            samples[name].append((time.perf_counter_ns() - t0) / 1e6)
    return {name: {"p50": float(np.percentile(s, 50)), "p90": float(np.percentile(s, 90)), "min": float(min(s))}
            for name, s in samples.items()}


def keras_rss_worker(npz: str, size: int, threads: int, groupnorm: str) -> dict:
    call = keras_callable(npz, size, threads, groupnorm)
    for _ in range(3):
        call()
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run_json(cmd: list[str]) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1000-class head, 160x160, 10 rounds")
    parser.add_argument("--runs", type=int, default=None, help="timed rounds (default 30, --quick 10)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--groupnorm", default="channelmean", help="comma list of GroupNorm lowerings to compare")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (npz, bundles) for --interleave")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bit_speed.md"))
    parser.add_argument("--interleave", nargs="+", metavar="BUNDLE",
                        help="only time these bundles against each other, round-robin in one process")
    parser.add_argument("--latency-worker", nargs="+", help=argparse.SUPPRESS)  # NPZ SIZE LOWERING BUNDLE...
    parser.add_argument("--keras-rss-worker", nargs=3, help=argparse.SUPPRESS)  # NPZ SIZE LOWERING
    args = parser.parse_args()
    size = 160 if args.quick else 224
    runs = args.runs or (10 if args.quick else 30)
    warmup = 2 if args.quick else 5

    if args.interleave:
        times = interleaved({b: tflite_callable(b, args.threads) for b in args.interleave}, runs, warmup)
        print("| bundle | p50 ms | p90 ms | min ms |\n|---|---:|---:|---:|")
        for name, t in times.items():
            print(f"| {name} | {t['p50']:.1f} | {t['p90']:.1f} | {t['min']:.1f} |")
        return 0
    if args.latency_worker:
        npz, worker_size, lowering, *bundles = args.latency_worker
        models = {"keras": keras_callable(npz, int(worker_size), args.threads, lowering)}
        models.update({b: tflite_callable(b, args.threads) for b in bundles})
        print(json.dumps(interleaved(models, runs, warmup)))
        return 0
    if args.keras_rss_worker:
        npz, worker_size, lowering = args.keras_rss_worker
        print(json.dumps(keras_rss_worker(npz, int(worker_size), args.threads, lowering)))
        return 0

    from liteship.convert.bit.config import get_config
    from liteship.convert.bit.export import export_bit
    from tests.convert.bit_fixtures import write_bit_npz, write_image_folder
    from tests.xnnpack_coverage import xnnpack_coverage

    classes = 1000 if args.quick else 21843  # BiT-M's ImageNet-21k head
    work = Path(tempfile.mkdtemp(prefix="bench-bit-"))
    npz = write_bit_npz(work / "BiT-M-R50x1-random.npz", get_config("R50x1"), num_classes=classes)
    calibration = write_image_folder(work / "calibration")  # 6 scikit-image photos
    print(f"# work dir {work}", file=sys.stderr)
    common = ["--threads", str(args.threads), "--runs", str(runs)] + (["--quick"] if args.quick else [])

    rows = []
    for lowering in args.groupnorm.split(","):
        bundles = {}
        for quant in QUANTS:
            t0 = time.perf_counter()
            bundles[quant] = export_bit(npz, work / f"{lowering}-{quant}", variant="R50x1", quant=quant,
                                        image_size=size, calibration=calibration if quant == "int8" else None,
                                        groupnorm=lowering)
            print(f"# {lowering} {quant}: converted in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        times = run_json([sys.executable, __file__, "--latency-worker", str(npz), str(size), lowering,
                          *map(str, bundles.values())] + common)
        keras_rss = run_json([sys.executable, __file__, "--keras-rss-worker", str(npz), str(size), lowering]
                             + common)["peak_rss_bytes"]
        rows.append({"model": f"TF Keras fp32 ({lowering})", **times["keras"], "rss": keras_rss,
                     "size": npz.stat().st_size, "coverage": "-", "quant": "keras", "lowering": lowering})
        for quant, bundle in bundles.items():
            alone = run_json([sys.executable, "-m", "liteship.runtime.bench", str(bundle), "--json", "--runs", "3",
                              "--warmup", "1", "--threads", str(args.threads)])
            cov = xnnpack_coverage(bundle / "model.tflite")
            undelegated = ", ".join(f"{k} x{v}" for k, v in cov["undelegated"].items()) or "none"
            rows.append({"model": f"liteship {quant} ({lowering})", **times[str(bundle)],
                         "rss": alone["peak_rss_bytes"], "size": (bundle / "model.tflite").stat().st_size,
                         "quant": quant, "lowering": lowering,
                         "coverage": f"{cov['delegated']}/{cov['nodes']} nodes, {cov['partitions']} partitions; "
                                     f"not delegated: {undelegated}"})

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"# BiT speed: BiT-M R50x1 ({classes} classes, random weights) at {size}x{size}",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine_summary()}; load average {load:.1f} at the end of the run",
        f"- threads: {args.threads}; batch 1; {runs} timed rounds after {warmup} warm-up; "
        f"{'--quick' if args.quick else 'full'} mode",
        "- latency: TF Keras (tf.function) and every .tflite (ai-edge-litert, XNNPACK) loaded in one process and run "
        "round-robin, so machine load hits all alike; peak RSS: each model alone in its own process",
        "- int8 calibrated on 6 scikit-image photos; TF Keras file size is the source .npz; TF Keras peak RSS "
        "includes reading the .npz and building the model in that process",
        "",
        "| model | p50 ms | p90 ms | min ms | peak RSS MiB | file MB | XNNPACK coverage |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(f"| {row['model']} | {row['p50']:.1f} | {row['p90']:.1f} | {row['min']:.1f} | "
                     f"{row['rss'] / 2**20:.0f} | {row['size'] / 1e6:.1f} | {row['coverage']} |")
    lines.append("")
    for lowering in args.groupnorm.split(","):
        by = {row["quant"]: row for row in rows if row["lowering"] == lowering}
        speed = by["int8"]["p50"] / by["keras"]["p50"]
        ratio = by["int8"]["size"] / by["fp32"]["size"]
        lines.append(f"- {lowering}: int8 p50 / TF Keras fp32 p50 = {speed:.2f} (target <= {TARGET_INT8_SPEED}: "
                     f"{'met' if speed <= TARGET_INT8_SPEED else 'NOT met'}); int8 file / fp32 file = {ratio:.3f} "
                     f"(target <= {TARGET_INT8_SIZE}: {'met' if ratio <= TARGET_INT8_SIZE else 'NOT met'})")
    text = "\n".join(lines) + "\n"
    print(text)
    write_atomic(args.out, text, mkdir=True)
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
