"""Grayscale classifiers end to end: `convert keras` writes channels "L", and calibration, `run bit` and
`eval bit` feed the model one luminance channel computed as Pillow's convert("L") does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cli.harness import run


@pytest.fixture(scope="module")
def gray(tmp_path_factory):
    keras = pytest.importorskip("keras")
    from PIL import Image

    root = tmp_path_factory.mktemp("gray")
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    model.save(root / "gray.keras")
    rng = np.random.default_rng(0)
    for c in ("zero", "one", "two"):
        (root / "data" / c).mkdir(parents=True)
        for i in range(2):
            rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # colour files: the runtime makes them gray
            Image.fromarray(rgb, "RGB").save(root / "data" / c / f"{i}.png")
    (root / "labels.txt").write_text("zero\none\ntwo\n")
    return root, model


def test_grayscale_keras_model_converts_runs_and_evaluates(gray, tmp_path):
    from PIL import Image

    root, model = gray
    for quant in ("fp32", "int8"):
        out = tmp_path / quant
        extra = ["--calibration", root / "data" / "zero"] if quant == "int8" else []
        result = run(["convert", "keras", root / "gray.keras", "--labels", root / "labels.txt", "--out", out,
                      "--quant", quant, *extra], tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads((out / "manifest.json").read_text())["preprocessing"]["channels"] == "L"
        image = root / "data" / "one" / "0.png"
        result = run(["run", "bit", out, image, "--json", "--top-k", "3"], tmp_path)
        assert result.returncode == 0, result.stderr
        scores = {t["label"]: t["score"] for t in json.loads(result.stdout)["predictions"][0]["top_k"]}
        luma = np.asarray(Image.open(image).convert("L"), np.float32) / 255.0
        expected = model.predict(luma[None, :, :, None], verbose=0)[0]
        got = np.array([scores[name] for name in ("zero", "one", "two")])
        tolerance = 1e-4 if quant == "fp32" else 0.05 * np.abs(expected).max() + 0.02  # int8: a few steps
        assert np.abs(got - expected).max() < tolerance, (quant, got, expected)
        result = run(["eval", "bit", out, root / "data", "--json"], tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["images"] == 6
