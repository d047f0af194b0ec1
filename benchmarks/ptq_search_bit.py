"""Where does post-training int8 lose accuracy on a BiT? Train small BiTs of several shapes on scikit-learn's digits
and compare the fp32 and full-integer int8 accuracy under the settings that usually hurt post-training
quantization: per-tensor instead of per-channel weights, and one calibration image instead of 300.

    .venv/bin/python benchmarks/ptq_search_bit.py                  # ~12 min on 2 busy cores
    .venv/bin/python benchmarks/ptq_search_bit.py --shapes 1,1,1,1:64

A model where int8 loses at least a point is what the QAT target needs (QAT int8 >= post-training int8
there). Writes benchmarks/results/bit_ptq_search.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
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

RESULTS = HERE / "results" / "bit_ptq_search.md"
SETTINGS = (("fp32", "fp32", None, False), ("int8, per-channel, 300 images", "int8", 300, False),
            ("int8, per-tensor, 300 images", "int8", 300, True), ("int8, per-channel, 1 image", "int8", 1, False),
            ("int8, per-tensor, 1 image", "int8", 1, True))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def shape(text: str) -> tuple[tuple[int, ...], int]:
    """"3,4,6,3:32" -> ((3, 4, 6, 3), 32): bottleneck units per block, stem width."""
    units, width = text.split(":")
    return tuple(int(u) for u in units.split(",")), int(width)


def search(units, width, data, work: Path, size: int, epochs: int) -> dict:
    import numpy as np

    from liteship.convert.bit.config import tiny
    from liteship.convert.bit.export import build_keras, calibration_dataset, load_checkpoint, preprocessing_block
    from liteship.convert.bit.prune import tflite_accuracy
    from liteship.convert.bit.train import checkpoint_tensors, save_npz, training_model
    from liteship.convert.tflite import convert_saved_model, export_keras_to_saved_model

    preprocessing = preprocessing_block(size, "-1,1")
    x_train, y_train = arrays(data["train"], preprocessing)
    x_test, y_test = arrays(data["test"], preprocessing)
    config = tiny(num_classes=10, image_size=size).replace(base_width=width, block_units=units)
    model = training_model(config, size)
    log(f"training BiT {units} stem width {width} ({model.count_params():,} parameters) for {epochs} epochs")
    trained = train(model, x_train, y_train, epochs=epochs, minutes=30, batch_size=32, learning_rate=2e-3)
    npz = work / "model.npz"
    save_npz(checkpoint_tensors(model, config), npz)
    saved_model = work / "saved_model"
    export_keras_to_saved_model(build_keras(load_checkpoint(npz, config, input_range="-1,1"), image_size=size),
                                saved_model)
    accuracy = {}
    for name, quant, images, per_tensor in SETTINGS:
        rep = calibration_dataset(data["calibration"], preprocessing, limit=images) if images else None

        def configure(converter, per_tensor=per_tensor):
            # one scale per weight tensor: the converter's private switch (TensorFlow 2.21)
            converter._experimental_disable_per_channel = per_tensor

        tflite, _ = convert_saved_model(saved_model, quant, representative_dataset=rep, configure=configure)
        accuracy[name] = tflite_accuracy(tflite, x_test, y_test)
        log(f"  {name}: {accuracy[name]:.4f}")
    shutil.rmtree(saved_model)
    return {"units": units, "width": width, "params": model.count_params(), "epochs": trained["epochs"],
            "train_accuracy": trained["train_accuracy"], "accuracy": accuracy, "test": int(np.size(y_test))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", type=shape, default=[shape("1,1,1,1:64"), shape("3,4,6,3:32")],
                    help="UNITS:STEM_WIDTH, e.g. 1,1,1,1:64 (the pruning benchmark's model), 3,4,6,3:32 (R50 depth)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="liteship-ptq-search-"))
    try:
        data = write_digits(work / "digits", test_fraction=0.25, calibration_count=300)
        results = [search(units, width, data, work, args.image_size, args.epochs) for units, width in args.shapes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_summary(),
            "size": args.image_size}
    text = markdown(results, info)
    print(text)
    if not args.no_write:
        tmp = RESULTS.with_suffix(".md.partial")
        tmp.write_text(text)
        tmp.replace(RESULTS)
        log(f"wrote {RESULTS}")
    return 0


def markdown(results: list[dict], info: dict) -> str:
    names = [name for name, *_ in SETTINGS]
    lines = [
        "# Where does post-training int8 lose on a BiT? (the search the QAT target needs)",
        "",
        f"- date: {info['date']}; machine: {info['machine']} (shared and busy; no timings here)",
        f"- small BiTs trained on scikit-learn digits at {info['size']}x{info['size']} (1347 train images), accuracy "
        f"on the {results[0]['test']} held-out digits (one image is {100 / results[0]['test']:.2f} points) through "
        "LiteRT; int8 is full-integer, calibrated on the first N of 300 shuffled training images",
        "",
        "| model | parameters | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for r in results:
        fp32 = r["accuracy"]["fp32"]
        cells = [f"{100 * r['accuracy'][n]:.2f}%" + (f" ({100 * (r['accuracy'][n] - fp32):+.2f})" if n != "fp32"
                                                    else "") for n in names]
        lines.append(f"| units {','.join(map(str, r['units']))}, stem {r['width']} | {r['params']:,} | "
                     + " | ".join(cells) + " |")
    worst = min(100 * (r["accuracy"][n] - r["accuracy"]["fp32"]) for r in results for n in names)
    lines += [
        "",
        f"- the largest int8 loss against fp32 is {-worst:.2f} points"
        + (": no model here loses a point, so the QAT target's precondition is not met by any of them. Weight "
           "standardization gives every output channel the same weight statistics (per-tensor scales cost nothing) "
           "and GroupNorm before every convolution keeps the activation ranges alike across images (one "
           "calibration image suffices): BiT's design is what makes its post-training int8 robust."
           if worst > -1 else ""),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
