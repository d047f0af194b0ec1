"""`liteship demo`: the main job on the built-in default, end to end on this host, with no downloads.

It trains a small image classifier on scikit-learn's digits (real handwritten digits that ship with the package),
converts it in every quantization mode (int8 calibrated on training images only), then runs each bundle through
the device-side runtime on held-out digits and benchmarks it, and prints one comparison table.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click
import numpy as np

from liteship.convert.quant import SUFFIXES, Quant

IMAGE_SIZE = 16  # digits are 8x8; 2x nearest upscale keeps them exact and gives the convolutions room


def digits_dataset(seed: int = 0):
    """(x_train, y_train, x_test, y_test) as float32 NHWC in [0, 1], stratified 75/25."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    x = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)[..., None]  # (n, 16, 16, 1)
    return train_test_split(x, digits.target.astype(np.int64), test_size=0.25, stratify=digits.target,
                            random_state=seed)


def train_classifier(x_train, y_train, *, epochs: int, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1), name="image"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, name="logits"),
    ])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    return model


def accuracy_of_bundle(bundle_dir: Path, x_test: np.ndarray, y_test: np.ndarray, threads: int | None) -> float:
    """Top-1 accuracy through the device-side runtime (quantizes int inputs, dequantizes int outputs)."""
    from liteship.runtime.bundle import Bundle
    from liteship.runtime.interpreter import create_interpreter

    bundle = Bundle.open(bundle_dir)
    interp = create_interpreter(bundle.model_path, num_threads=threads)
    runner = interp.get_signature_runner()
    (in_name, in_d), = runner.get_input_details().items()
    (out_name, out_d), = runner.get_output_details().items()
    correct = 0
    for x, y in zip(x_test, y_test):
        feed = x[None]
        if in_d["dtype"] != np.float32:
            scale, zero = in_d["quantization"]
            info = np.iinfo(in_d["dtype"])
            feed = np.clip(np.round(feed / scale + zero), info.min, info.max).astype(in_d["dtype"])
        out = runner(**{in_name: feed})[out_name]
        if out_d["dtype"] != np.float32:
            scale, zero = out_d["quantization"]
            out = (out.astype(np.float32) - zero) * scale
        correct += int(out.argmax() == y)
    return correct / len(y_test)


def run_demo(workdir: Path, *, epochs: int = 8, runs: int = 200, threads: int | None = None,
             modes: tuple[str, ...] = tuple(q.value for q in Quant)) -> dict:
    """Builds, converts, evaluates and benchmarks; returns the rows of the comparison table."""
    from liteship.convert.cli import convert_to_bundle
    from liteship.convert.tflite import keras_as_saved_model
    from liteship.runtime.bench import benchmark

    workdir.mkdir(parents=True, exist_ok=True)
    x_train, x_test, y_train, y_test = digits_dataset()
    click.echo(f"[liteship] training a digits classifier ({len(x_train)} train / {len(x_test)} held-out images)",
               err=True)
    t0 = time.perf_counter()
    model = train_classifier(x_train, y_train, epochs=epochs)
    keras_acc = float((model.predict(x_test, verbose=0).argmax(-1) == y_test).mean())
    click.echo(f"[liteship] trained in {time.perf_counter() - t0:.1f} s, Keras accuracy {keras_acc:.4f}", err=True)
    source = workdir / "digits.keras"
    model.save(source)
    calibration = workdir / "calibration.npy"
    np.save(calibration, x_train[:200])
    (workdir / "labels.txt").write_text("".join(f"{d}\n" for d in range(10)))

    rows = [{"mode": "keras (source)", "size_bytes": source.stat().st_size, "accuracy": keras_acc}]
    with keras_as_saved_model(source) as saved_model:
        for mode in modes:
            quant = Quant.parse(mode)
            out = workdir / f"digits-{SUFFIXES[quant]}"
            convert_to_bundle(saved_model, source=source, out=out, quant=quant,
                              calibration=calibration if quant.needs_calibration else None, io_type="float32",
                              allow_tf_ops=False, labels=workdir / "labels.txt", signature=None,
                              mean=(0.0,), std=(1.0,))
            acc = accuracy_of_bundle(out, x_test, y_test, threads)
            bench = benchmark(out, runs=runs, warmup=20, threads=threads)
            rows.append({"mode": quant.value, "bundle": str(out), "size_bytes": bench["model"]["size_bytes"],
                         "accuracy": acc, "p50_ms": bench["latency_ms"]["p50"], "p90_ms": bench["latency_ms"]["p90"],
                         "init_ms": bench["init_ms"], "backend": bench["runtime"]["backend"]})
    return {"rows": rows, "keras_accuracy": keras_acc, "test_images": int(len(y_test))}


def format_rows(rows: list[dict]) -> str:
    fp32 = next((r for r in rows if r["mode"] == "fp32"), None)
    lines = ["| model | size (KB) | size vs fp32 | held-out accuracy | p50 ms | p90 ms | init ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rel = f"{r['size_bytes'] / fp32['size_bytes']:.2f}x" if fp32 and "p50_ms" in r else ""
        timing = (f"{r['p50_ms']:.4f} | {r['p90_ms']:.4f} | {r['init_ms']:.2f}" if "p50_ms" in r else " | | ")
        lines.append(f"| {r['mode']} | {r['size_bytes'] / 1024:.1f} | {rel} | {r['accuracy']:.4f} | {timing} |")
    return "\n".join(lines)


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("liteship-demo"), show_default=True,
              help="Where the model, bundles and results go.")
@click.option("--epochs", type=int, default=8, show_default=True)
@click.option("--runs", type=int, default=200, show_default=True, help="Timed runs per bundle.")
@click.option("--threads", type=int, default=None)
def command(workdir: Path, epochs: int, runs: int, threads: int | None) -> None:
    """Build a digits classifier, convert it in every mode, and run and bench each bundle on this host."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = run_demo(workdir, epochs=epochs, runs=runs, threads=threads)
    table = format_rows(result["rows"])
    (workdir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (workdir / "results.md").write_text(table + "\n")
    click.echo(table)
    click.echo(f"\nbundles, results.json and results.md are in {workdir}/")
