"""Small bundles (with reference inputs and outputs) that runtime tests share.

Building them needs TensorFlow. The device-like CI step has none: an earlier step runs
``python -m tests.fixture_bundles OUTDIR`` and the runtime tests read OUTDIR from $LITESHIP_TEST_BUNDLES.
Each bundle folder gets a ``reference.npz`` beside it (``<name>.reference.npz``) with inputs ``x`` and the source
model's outputs ``y``, so correctness is checked against the source model, not against TFLite itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

CLASSIFIER_MODES = ("fp32", "fp16", "dynamic-int8", "int8", "int8x16")


def build_classifier(outdir: Path) -> None:
    """A tiny conv classifier on 12x12x3 images, in every quantization mode, plus its Keras outputs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from liteship.convert.bundle import write_bundle
    from liteship.convert.calibration import representative_dataset
    from liteship.convert.tflite import convert_saved_model, export_keras_to_saved_model

    keras.utils.set_random_seed(7)
    model = keras.Sequential([
        keras.Input((12, 12, 3), name="image"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.AveragePooling2D(2),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(5),
    ])
    rng = np.random.default_rng(0)
    calib = rng.uniform(0, 1, size=(64, 12, 12, 3)).astype(np.float32)
    x = rng.uniform(0, 1, size=(16, 12, 12, 3)).astype(np.float32)
    outdir.mkdir(parents=True, exist_ok=True)
    np.save(outdir / "classifier-calibration.npy", calib)
    saved = outdir / "classifier-savedmodel"
    export_keras_to_saved_model(model, saved)
    y = model.predict(x, verbose=0)
    spec = {"shape": [-1, 12, 12, 3], "dtype": "float32"}
    for mode in CLASSIFIER_MODES:
        rep = representative_dataset(outdir / "classifier-calibration.npy", spec) if mode in ("int8", "int8x16") \
            else None
        data, report = convert_saved_model(saved, mode, representative_dataset=rep)
        write_bundle(outdir / f"classifier-{mode}", data, family="classifier", task="image-classification",
                     quantization=mode, preprocessing={"image_size": [12, 12], "mean": [0, 0, 0], "std": [1, 1, 1]},
                     assets={"labels": ("assets/labels.txt", b"a\nb\nc\nd\ne\n")},
                     source={"path": "keras", "sha256": "0" * 64}, conversion=report)
        np.savez(outdir / f"classifier-{mode}.reference.npz", x=x, y=y)


def build_dense(outdir: Path) -> None:
    """A dense classifier (32 -> 64 -> 5) in dynamic-int8, as converted by default (dense layers per channel:
    TFLite 2.17) and for TFLite 2.14 (--min-runtime 2.14), plus its Keras outputs. Its first weight matrix has
    2048 entries: the converter leaves matrices under 1024 in float."""
    import keras

    from liteship.convert.bundle import write_bundle
    from liteship.convert.tflite import convert_saved_model, export_keras_to_saved_model

    keras.utils.set_random_seed(11)
    model = keras.Sequential([keras.Input((32,), name="x"), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(5)])
    x = np.random.default_rng(1).normal(size=(16, 32)).astype(np.float32)
    saved = outdir / "dense-savedmodel"
    export_keras_to_saved_model(model, saved)
    y = model.predict(x, verbose=0)
    for name, min_runtime in (("dense-dynamic-int8", None), ("dense-dynamic-int8-rt2.14", "2.14")):
        data, report = convert_saved_model(saved, "dynamic-int8", min_runtime=min_runtime)
        write_bundle(outdir / name, data, family="classifier", task="classification", quantization="dynamic-int8",
                     source={"path": "keras", "sha256": "0" * 64}, conversion=report)
        np.savez(outdir / f"{name}.reference.npz", x=x, y=y)


def build_gpt2(outdir: Path) -> None:
    from tests.gpt2_fixtures import build_gpt2 as build

    build(outdir)


BUILDERS = {"classifier": build_classifier, "dense": build_dense, "gpt2": build_gpt2}


def build_all(outdir: Path) -> Path:
    for build in BUILDERS.values():
        build(outdir)
    (outdir / "COMPLETE").write_text("ok\n")
    return outdir


if __name__ == "__main__":
    build_all(Path(sys.argv[1]))
