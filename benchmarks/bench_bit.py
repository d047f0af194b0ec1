"""BiT speed: TF Keras fp32 vs liteship fp32 / fp16 / dynamic-int8 / int8 .tflite on this machine.

    /work/venv/bin/python benchmarks/bench_bit.py            # BiT-M R50x1 (21843 classes) at 224x224, ~15 min
    /work/venv/bin/python benchmarks/bench_bit.py --quick    # 1000-class head at 160x160, fewer runs, ~5 min

Weights are random (no downloads), saved in the original BiT npz naming and converted with the real converter.
int8 is calibrated on scikit-image's sample photos. Every model is timed in its own subprocess so peak RSS is that
model's alone: TFLite through `python -m liteship.runtime.bench` (what a board runs), TF Keras through this file's
--keras-worker mode (a tf.function around the tf_keras model, same threads). Prints a Markdown table and writes
benchmarks/results/bit_speed.md. Targets (issue 4): int8 p50 <= 0.35x TF Keras fp32 p50; int8 file <= 0.27x fp32.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.convert.bit_fixtures: npz writer and sample images

QUANTS = ("fp32", "fp16", "dynamic-int8", "int8")
TARGET_INT8_SPEED = 0.35
TARGET_INT8_SIZE = 0.27


def keras_worker(npz: str, size: int, runs: int, warmup: int, threads: int, groupnorm: str) -> dict:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from liteship.convert.bit.export import build_keras, load_checkpoint

    model = build_keras(load_checkpoint(npz, "R50x1"), image_size=size, groupnorm=groupnorm)
    call = tf.function(lambda x: model(x, training=False))
    x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (1, size, size, 3)).astype(np.float32))
    for _ in range(warmup + 1):
        call(x).numpy()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        call(x).numpy()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return {"p50": float(np.percentile(samples, 50)), "p90": float(np.percentile(samples, 90)),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def interleaved(bundles: list[str], runs: int, threads: int) -> list[dict]:
    """Time several bundles in one process, alternating every invocation, so that load from other processes on a
    shared machine hits all of them alike: the ratios are trustworthy even when absolute numbers are not."""
    from liteship.runtime.bench import synthetic_inputs
    from liteship.runtime.bundle import Bundle
    from liteship.runtime.interpreter import create_interpreter

    runners, inputs = [], []
    for path in bundles:
        interpreter = create_interpreter(Bundle.open(path).model_path, num_threads=threads)
        runner = interpreter.get_signature_runner()
        runners.append((interpreter, runner))
        inputs.append(synthetic_inputs(runner.get_input_details()))
        for _ in range(3):
            runner(**inputs[-1])
    samples = [[] for _ in bundles]
    for _ in range(runs):
        for i, (_, runner) in enumerate(runners):
            t0 = time.perf_counter_ns()
            runner(**inputs[i])
            samples[i].append((time.perf_counter_ns() - t0) / 1e6)
    return [{"bundle": path, "p50": float(np.percentile(s, 50)), "min": float(min(s))}
            for path, s in zip(bundles, samples)]


def run_json(cmd: list[str]) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1000-class head, 160x160, 10 runs")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--groupnorm", default="matmul", help="comma list of GroupNorm lowerings to compare")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bit_speed.md"))
    parser.add_argument("--interleave", nargs="+", metavar="BUNDLE",
                        help="only time these bundles against each other, alternating runs in one process")
    parser.add_argument("--keras-worker", nargs=2, metavar=("NPZ", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = 160 if args.quick else 224
    runs = args.runs or (10 if args.quick else 30)
    warmup = 2 if args.quick else 5
    lowerings = args.groupnorm.split(",")
    if args.interleave:
        print("| bundle | p50 ms | min ms |\n|---|---:|---:|")
        for row in interleaved(args.interleave, args.runs or 30, args.threads):
            print(f"| {row['bundle']} | {row['p50']:.1f} | {row['min']:.1f} |")
        return 0
    if args.keras_worker:
        npz, worker_size = args.keras_worker
        print(json.dumps(keras_worker(npz, int(worker_size), runs, warmup, args.threads, lowerings[0])))
        return 0

    from tests.convert.bit_fixtures import write_bit_npz, write_image_folder

    from liteship.convert.bit.config import get_config
    from liteship.convert.bit.export import export_bit, xnnpack_coverage

    classes = 1000 if args.quick else 21843  # BiT-M's ImageNet-21k head
    work = Path(tempfile.mkdtemp(prefix="bench-bit-"))
    npz = write_bit_npz(work / "BiT-M-R50x1-random.npz", get_config("R50x1"), num_classes=classes)
    calibration = write_image_folder(work / "calibration")  # 6 scikit-image photos
    print(f"# work dir {work}", file=sys.stderr)

    rows = []
    for lowering in lowerings:
        keras = run_json([sys.executable, __file__, "--keras-worker", str(npz), str(size), "--threads",
                          str(args.threads), "--groupnorm", lowering] + (["--quick"] if args.quick else [])
                         + (["--runs", str(args.runs)] if args.runs else []))
        rows.append({"model": f"TF Keras fp32 ({lowering})", "p50": keras["p50"], "p90": keras["p90"],
                     "rss": keras["peak_rss_bytes"], "size": npz.stat().st_size, "coverage": "-",
                     "quant": "keras", "lowering": lowering})
        for quant in QUANTS:
            t0 = time.perf_counter()
            bundle = export_bit(npz, work / f"{lowering}-{quant}", variant="R50x1", quant=quant, image_size=size,
                                calibration=calibration if quant == "int8" else None, groupnorm=lowering)
            seconds = time.perf_counter() - t0
            result = run_json([sys.executable, "-m", "liteship.runtime.bench", str(bundle), "--json",
                               "--runs", str(runs), "--warmup", str(warmup), "--threads", str(args.threads)])
            cov = xnnpack_coverage(bundle / "model.tflite")
            undelegated = ", ".join(f"{k} x{v}" for k, v in cov["undelegated"].items()) or "none"
            rows.append({"model": f"liteship {quant} ({lowering})", "p50": result["latency_ms"]["p50"],
                         "p90": result["latency_ms"]["p90"], "rss": result["peak_rss_bytes"],
                         "size": (bundle / "model.tflite").stat().st_size, "quant": quant, "lowering": lowering,
                         "coverage": f"{cov['delegated']}/{cov['nodes']} nodes, {cov['partitions']} partitions; "
                                     f"not delegated: {undelegated}", "convert_s": seconds})
            print(f"# {rows[-1]['model']}: p50 {rows[-1]['p50']:.1f} ms, converted in {seconds:.0f} s",
                  file=sys.stderr)

    lines = [
        f"# BiT speed: BiT-M R50x1 ({classes} classes, random weights) at {size}x{size}",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}",
        f"- threads: {args.threads}; runs: {runs} after {warmup} warm-up; batch 1; "
        f"{'--quick' if args.quick else 'full'} mode",
        "- TF Keras: tf.function around the same tf_keras model; TFLite: `python -m liteship.runtime.bench` "
        "(ai-edge-litert, XNNPACK on); each in its own process (peak RSS is that process's)",
        "- int8 calibrated on 6 scikit-image photos; file size of TF Keras is the source .npz",
        "",
        "| model | p50 ms | p90 ms | peak RSS MiB | file MB | XNNPACK coverage |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(f"| {row['model']} | {row['p50']:.1f} | {row['p90']:.1f} | {row['rss'] / 2**20:.0f} | "
                     f"{row['size'] / 1e6:.1f} | {row['coverage']} |")
    lines.append("")
    for lowering in lowerings:
        by = {row["quant"]: row for row in rows if row["lowering"] == lowering}
        speed = by["int8"]["p50"] / by["keras"]["p50"]
        ratio = by["int8"]["size"] / by["fp32"]["size"]
        lines.append(f"- {lowering}: int8 p50 / TF Keras fp32 p50 = {speed:.2f} (target <= {TARGET_INT8_SPEED}: "
                     f"{'met' if speed <= TARGET_INT8_SPEED else 'NOT met'}); int8 file / fp32 file = {ratio:.3f} "
                     f"(target <= {TARGET_INT8_SIZE}: {'met' if ratio <= TARGET_INT8_SIZE else 'NOT met'})")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
