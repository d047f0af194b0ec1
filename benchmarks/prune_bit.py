"""BiT pruning and QAT, measured: train a tiny BiT on scikit-learn's digits, then prune / QAT-tune it with
`liteship prune bit` / `liteship qat bit` (the library calls they run), convert every variant to int8 the way
`liteship convert bit --quant int8 --calibration` does, and compare them side by side in one run.

    .venv/bin/python benchmarks/prune_bit.py            # ~15 min on 2 busy cores
    .venv/bin/python benchmarks/prune_bit.py --quick    # a smoke run

Rows, all int8 (full-integer, calibrated on 300 training images), accuracy on the 450 held-out digits
through the runtime (`liteship eval bit`), p50 latency from `liteship bench` (liteship.runtime.bench, XNNPACK):
- the trained model, and the same model fine-tuned as many steps as the pruned ones (the fair baseline: pruning
  rows get that fine-tuning too);
- magnitude 50% + fine-tune: targets gzip <= 0.6x the baseline's, accuracy within 1 point;
- structured 40% of bottleneck channels + fine-tune: targets p50 <= 0.7x and file <= 0.7x, accuracy within 1 point;
- QAT vs post-training int8. On this model post-training int8 loses nothing with the default GroupNorm lowering
  (benchmarks/results/bit_accuracy.md), so the QAT pair also runs with the "matmul" lowering, whose int8 is known
  to lose accuracy (docs/bit_groupnorm.md): that is the model "where post-training int8 loses".

Writes benchmarks/results/bit_prune.md (with the machine and date).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from accuracy_bit import arrays, train, write_digits  # noqa: E402

from liteship.runtime.bench import machine_summary  # noqa: E402
from liteship.runtime.files import write_atomic  # noqa: E402

RESULTS = HERE / "results" / "bit_prune.md"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(name: str, npz: Path, config, data: dict, size: int, out: Path, threads: int, runs: int,
            groupnorm: str = "channelmean") -> dict:
    from liteship.convert.bit.export import export_bit
    from liteship.runtime.bench import benchmark
    from liteship.runtime.classify import evaluate

    bundle = export_bit(npz, out / name.replace(" ", "-").replace("%", "").replace(",", ""), variant=config,
                        quant="int8", calibration=data["calibration"], labels=data["labels"], image_size=size,
                        input_range="-1,1", calibration_limit=None, groupnorm=groupnorm)
    tflite = (bundle / "model.tflite").read_bytes()
    accuracy = evaluate(bundle, data["test_dir"], threads=threads)["accuracy"]
    p50 = benchmark(bundle, runs=runs, warmup=10, threads=threads)["latency_ms"]["p50"]
    row = {"name": name, "accuracy": accuracy, "bytes": len(tflite),
           "gzip": len(gzip.compress(tflite, compresslevel=9, mtime=0)), "p50": p50}
    log(f"  {name}: accuracy {accuracy:.4f}, {len(tflite)} bytes, gzip {row['gzip']}, p50 {p50:.3f} ms")
    return row


def sparse_fp32(name: str, npz: Path, config, size: int, threads: int, runs: int) -> dict:
    """fp32 .tflite with the converter's sparsity optimization (EXPERIMENTAL_SPARSITY: sparse weights stored
    compressed, for XNNPACK's sparse fp32 kernels where it can use them), timed like the bundles."""
    import tensorflow as tf

    from liteship.convert.bit.export import build_keras, load_checkpoint
    from liteship.convert.tflite import convert_saved_model, export_keras_to_saved_model
    from liteship.runtime.bench import benchmark

    def sparsity(converter):
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]

    with tempfile.TemporaryDirectory(prefix="liteship-sparse-") as tmp:
        export_keras_to_saved_model(build_keras(load_checkpoint(npz, config), image_size=size), Path(tmp) / "sm")
        tflite, _ = convert_saved_model(Path(tmp) / "sm", "fp32", configure=sparsity)
        path = Path(tmp) / "model.tflite"
        path.write_bytes(tflite)
        p50 = benchmark(path, runs=runs, warmup=10, threads=threads)["latency_ms"]["p50"]
    row = {"name": name, "bytes": len(tflite), "gzip": len(gzip.compress(tflite, compresslevel=9, mtime=0)),
           "p50": p50}
    log(f"  {name}: {len(tflite)} bytes, gzip {row['gzip']}, p50 {p50:.3f} ms")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=None, help="training of the base model (default 8, quick 2)")
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps per variant (default 300, quick 20)")
    ap.add_argument("--learning-rate", type=float, default=5e-4)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--base-width", type=int, default=64,
                    help="stem width (tiny() has 32, whose block1 bottleneck of 32 channels = 32 GroupNorm groups "
                         "cannot lose a channel; 64 lets every block be pruned)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 8)
    steps = args.steps or (20 if args.quick else 300)

    from liteship.convert import prune as P
    from liteship.convert.bit.config import tiny
    from liteship.convert.bit.export import preprocessing_block
    from liteship.convert.bit.prune import prune_bit
    from liteship.convert.bit.train import checkpoint_tensors, save_npz, training_model

    work = Path(tempfile.mkdtemp(prefix="liteship-prune-bench-"))
    try:
        data = write_digits(work / "digits", test_fraction=0.25, calibration_count=300)
        size = args.image_size
        preprocessing = preprocessing_block(size, "-1,1")
        x_train, y_train = arrays(data["train"], preprocessing)
        config = tiny(num_classes=10, image_size=size).replace(base_width=args.base_width)
        model = training_model(config, size)
        log(f"training the base tiny BiT for {epochs} epochs")
        trained = train(model, x_train, y_train, epochs=epochs, minutes=30, batch_size=32, learning_rate=2e-3)
        base = work / "base.npz"
        save_npz(checkpoint_tensors(model, config), base)

        def tuned(name, **options):
            out = work / f"{name}.npz"
            opts = P.PruneOptions(**{"steps": steps, "learning_rate": args.learning_rate, "batch_size": 32,
                                     **options})
            log(f"{name}: {opts}")
            record = prune_bit(base, out, work / "digits" / "train", opts, variant=config, image_size=size,
                               convert=False, progress=log)
            return out, record

        variants = {
            "fine-tuned": tuned("fine-tuned", method="none", sparsity=0.0),
            "magnitude 50%": tuned("magnitude", method="magnitude", sparsity=0.5),
            "structured 40%": tuned("structured", method="structured", sparsity=0.4),
            "QAT": tuned("qat", method="none", sparsity=0.0, qat=True),
        }
        out = work / "bundles"
        rows = {"trained": measure("trained", base, config, data, size, out, args.threads, args.runs)}
        for name, (npz, _) in variants.items():
            rows[name] = measure(name, npz, config, data, size, out, args.threads, args.runs)
        for name, npz in (("fine-tuned, matmul GroupNorm", variants["fine-tuned"][0]),
                          ("QAT, matmul GroupNorm", variants["QAT"][0])):
            rows[name] = measure(name, npz, config, data, size, out, args.threads, args.runs, groupnorm="matmul")
        sparse = {name: sparse_fp32(name, npz, config, size, args.threads, args.runs)
                  for name, npz in (("fp32, fine-tuned", variants["fine-tuned"][0]),
                                    ("fp32, magnitude 50%", variants["magnitude 50%"][0]))}
        info = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": machine_summary(), "epochs": trained["epochs"], "steps": steps,
                "lr": args.learning_rate, "threads": args.threads, "runs": args.runs, "size": size,
                "base_width": args.base_width, "params": model.count_params(),
                "records": {name: record for name, (_, record) in variants.items()}}
        table = markdown(rows, info, sparse)
        print(table)
        if not args.no_write:
            write_atomic(RESULTS, table, mkdir=True)
            log(f"wrote {RESULTS}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def markdown(rows: dict, info: dict, sparse: dict) -> str:
    base = rows["fine-tuned"]
    lines = [
        "# BiT pruning and QAT: tiny BiT on scikit-learn digits, int8, before and after in one run",
        "",
        f"- date: {info['date']}; machine: {info['machine']}. **The machine was shared with other jobs and busy: "
        "latencies are indicative**, sizes and accuracies are exact.",
        f"- base: BiT with one unit per block, stem width {info['base_width']} ({info['params']:,} parameters), "
        f"trained {info['epochs']} epochs at {info['size']}x{info['size']}; every other row "
        f"fine-tuned {info['steps']} more steps (Adam, lr {info['lr']}, batch 32) on the training images with "
        "`liteship prune bit` / `liteship qat bit`; 'fine-tuned' is the same fine-tuning without pruning, the "
        "baseline the targets compare with",
        f"- every row full-integer int8, calibrated on 300 training images; accuracy on 450 held-out digits "
        f"through the runtime; p50 of {info['runs']} runs, {info['threads']} thread(s), XNNPACK",
        "",
        "| model | accuracy | vs baseline (points) | .tflite bytes | vs baseline | gzip bytes | vs baseline "
        "| p50 ms | vs baseline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        ref = rows["fine-tuned, matmul GroupNorm"] if name == "QAT, matmul GroupNorm" else base
        lines.append(f"| {name} | {100 * row['accuracy']:.2f}% | {100 * (row['accuracy'] - ref['accuracy']):+.2f} | "
                     f"{row['bytes']:,} | {row['bytes'] / ref['bytes']:.3f} | {row['gzip']:,} | "
                     f"{row['gzip'] / ref['gzip']:.3f} | {row['p50']:.3f} | {row['p50'] / ref['p50']:.3f} |")
    mag, struct = rows["magnitude 50%"], rows["structured 40%"]
    ok = lambda cond: "met" if cond else "NOT met"  # noqa: E731
    qat, ptq = rows["QAT, matmul GroupNorm"], rows["fine-tuned, matmul GroupNorm"]
    lines += [
        "",
        f"- magnitude 50% + fine-tune + int8: gzip {mag['gzip'] / base['gzip']:.3f}x (target <= 0.6x: "
        f"{ok(mag['gzip'] <= 0.6 * base['gzip'])}), accuracy {100 * (mag['accuracy'] - base['accuracy']):+.2f} points "
        f"(target within 1: {ok(mag['accuracy'] >= base['accuracy'] - 0.01)})",
        f"- structured 40% + fine-tune + int8: p50 {struct['p50'] / base['p50']:.3f}x (target <= 0.7x: "
        f"{ok(struct['p50'] <= 0.7 * base['p50'])}), file {struct['bytes'] / base['bytes']:.3f}x (target <= 0.7x: "
        f"{ok(struct['bytes'] <= 0.7 * base['bytes'])}), accuracy "
        f"{100 * (struct['accuracy'] - base['accuracy']):+.2f} points "
        f"(target within 1: {ok(struct['accuracy'] >= base['accuracy'] - 0.01)})",
        f"- QAT vs post-training int8: default lowering {100 * rows['QAT']['accuracy']:.2f}% vs "
        f"{100 * base['accuracy']:.2f}%; matmul lowering {100 * qat['accuracy']:.2f}% vs {100 * ptq['accuracy']:.2f}% "
        f"(target QAT >= PTQ: {ok(qat['accuracy'] >= ptq['accuracy'])}; post-training int8 with the matmul lowering "
        f"lost {100 * (rows['fine-tuned']['accuracy'] - ptq['accuracy']):+.2f} points against the default lowering "
        "here, the condition the target needs is that this is at least 1)",
        f"- structured channels removed: {info['records']['structured 40%']['sparsity']['measured']:.3f} of the "
        f"bottleneck channels; magnitude measured sparsity "
        f"{info['records']['magnitude 50%']['sparsity']['measured']:.4f} of the pruned kernels",
        "- magnitude pruning leaves the dense .tflite the same size and speed (XNNPACK runs the zeros); only the "
        "compressed file shrinks. Structured pruning shrinks the file and the latency on any delegate.",
        "",
        "XNNPACK's sparse kernels: fp32 .tflite converted with the converter's sparsity optimization "
        "(`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`), same timing:",
        "",
        "| model | .tflite bytes | gzip bytes | p50 ms |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {row['bytes']:,} | {row['gzip']:,} | {row['p50']:.3f} |" for name, row in sparse.items()]
    dense, pruned = sparse["fp32, fine-tuned"], sparse["fp32, magnitude 50%"]
    lines += ["", f"- sparse encoding of the 50% pruned model: file {pruned['bytes'] / dense['bytes']:.3f}x, p50 "
              f"{pruned['p50'] / dense['p50']:.3f}x the dense fp32 (XNNPACK's sparse path needs an NCHW-friendly "
              "graph of 1x1 convolutions; BiT's GroupNorm reductions sit between them, so a p50 near 1x means it "
              "did not pay here)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
