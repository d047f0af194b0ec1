"""End to end: tiny tf_keras classifiers -> liteship bundles (the generic converter) -> ImageClassifier / CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from liteship.errors import BundleError, RuntimeLiteshipError
from liteship.runtime.classify import ImageClassifier, Prediction, Skipped, dequantize, evaluate, quantize
from liteship.runtime.image_cli import eval_command, run_command
from liteship.runtime.images import preprocess

skimage_data = pytest.importorskip("skimage.data")

SIZE = 16
PREPROCESSING = {"image_size": [SIZE, SIZE], "resize": "bilinear", "crop": "none", "mean": [0.5] * 3,
                 "std": [0.5] * 3, "input_range": [-1, 1], "channels": "RGB", "layout": "NHWC"}
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def colour_model(tf_keras, batch_size=None):
    """logits = 4 * (mean R, mean G, mean B) of the [-1, 1] image: a pure red image is 'red' with p = 0.9993."""
    inputs = tf_keras.Input((SIZE, SIZE, 3), batch_size=batch_size, name="image")
    pooled = tf_keras.layers.GlobalAveragePooling2D()(inputs)
    head = tf_keras.layers.Dense(3, kernel_initializer=tf_keras.initializers.Constant(4 * np.eye(3)),
                                 bias_initializer="zeros")
    return tf_keras.Model(inputs, head(pooled))


def random_model(tf_keras, batch_size=1):
    """A small conv net with seeded random weights: 5 classes, nothing meaningful, for output comparisons."""
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((SIZE, SIZE, 3), batch_size=batch_size, name="image")
    x = tf_keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = tf_keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(5)(x))


def make_bundle(tmp_path, model, name, quant="fp32", *, labels=None, config=None, preprocessing=None,
                calibration=None, io_type="float32"):
    import tensorflow as tf

    from liteship.convert.bundle import write_bundle
    from liteship.convert.tflite import convert_saved_model

    saved = tmp_path / f"{name}-saved"
    tf.saved_model.save(model, str(saved))
    representative = None
    if calibration is not None:
        def representative():
            for array in calibration:
                yield [array[None].astype(np.float32)]
    tflite, report = convert_saved_model(saved, quant, representative_dataset=representative, io_type=io_type)
    assets = {"labels": ("assets/labels.txt", ("\n".join(labels) + "\n").encode())} if labels else None
    return write_bundle(tmp_path / name, tflite, family="classifier", task="image-classification", quantization=quant,
                        io_type=io_type, preprocessing=preprocessing or PREPROCESSING,
                        config={"output": "logits"} if config is None else config, assets=assets)


def png(path, rgb, size=(23, 31)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), rgb, np.uint8)).save(path)
    return path


def photos():
    return [skimage_data.astronaut(), skimage_data.chelsea(), skimage_data.camera(), skimage_data.logo()]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Four bundles, converted once: colour fp32 (dynamic batch), colour int8 with int8 I/O, colour without
    softmax, random conv net fp32 (fixed batch 1). Also returns the random tf_keras model for comparisons."""
    tf_keras = pytest.importorskip("tf_keras")
    tmp = tmp_path_factory.mktemp("bundles")
    labels = list(COLOURS)
    colour = colour_model(tf_keras)
    rng = np.random.default_rng(0)
    calibration = [preprocess(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), PREPROCESSING) for _ in range(32)]
    calibration += [preprocess(np.full((SIZE, SIZE, 3), rgb, np.uint8), PREPROCESSING) for rgb in COLOURS.values()]
    rand = random_model(tf_keras)
    return {
        "fp32": make_bundle(tmp, colour, "colour-fp32", labels=labels),
        "int8": make_bundle(tmp, colour, "colour-int8", "int8", labels=labels, calibration=calibration,
                            io_type="int8"),
        "int8_float_io": make_bundle(tmp, colour, "colour-int8-float-io", "int8", labels=labels,
                                     calibration=calibration),
        "raw": make_bundle(tmp, colour, "colour-raw", labels=labels, config={}),
        "random": make_bundle(tmp, rand, "random-fp32"),
        "random_model": rand,
    }


# ----------------------------------------------------------------------------------------------- classify


def test_pure_colours_get_their_labels_with_softmax_scores(bundles, tmp_path):
    classifier = ImageClassifier(bundles["fp32"], threads=1)
    paths = [png(tmp_path / f"{name}.png", rgb) for name, rgb in COLOURS.items()]
    predictions = classifier.classify(paths, top_k=2)
    assert [p.label for p in predictions] == list(COLOURS)
    assert [p.source for p in predictions] == [str(p) for p in paths]
    expected = np.exp(4.0) / (np.exp(4.0) + 2 * np.exp(-4.0))  # softmax of (4, -4, -4)
    for prediction in predictions:
        assert len(prediction.top) == 2
        assert prediction.score == pytest.approx(expected, abs=1e-5)  # float32 softmax
        assert prediction.top[1].score == pytest.approx(np.exp(-4.0) / (np.exp(4.0) + 2 * np.exp(-4.0)), abs=1e-5)


def test_without_logits_flag_scores_are_the_raw_outputs(bundles):
    green = np.full((5, 7, 3), COLOURS["green"], np.uint8)
    prediction = ImageClassifier(bundles["raw"]).classify(green, top_k=3)[0]
    assert prediction.label == "green" and prediction.source == "<image 0>"
    np.testing.assert_allclose([t.score for t in prediction.top], [4.0, -4.0, -4.0], atol=1e-5)
    # outputs() is the no-softmax view of any bundle
    logits = ImageClassifier(bundles["fp32"]).outputs(preprocess(green, PREPROCESSING)[None])
    np.testing.assert_allclose(logits, [[-4.0, 4.0, -4.0]], atol=1e-5)


def test_tflite_scores_match_the_keras_model_on_photos(bundles):
    classifier = ImageClassifier(bundles["random"])
    assert classifier.batch_size == 1  # the fixed-batch path
    predictions = classifier.classify(photos(), top_k=5)
    inputs = np.stack([preprocess(p, PREPROCESSING) for p in photos()])
    logits = bundles["random_model"](inputs).numpy()
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert [p.label for p in predictions] == [str(i) for i in logits.argmax(-1)]  # no labels.txt: "0".."4"
    for prediction, row in zip(predictions, probabilities):
        ours = np.zeros(5)
        for top in prediction.top:
            ours[top.index] = top.score
        # fp32 TFLite (XNNPACK) vs TF on the same input: float32 reassociation only; 1e-5 on probabilities.
        np.testing.assert_allclose(ours, row, atol=1e-5)


def test_dynamic_batch_runs_a_folder_in_batches_like_one_by_one(bundles, tmp_path):
    classifier = ImageClassifier(bundles["fp32"])
    assert classifier.batch_size is None
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8) for i in range(11)]  # > one batch of 8
    together = classifier.classify(images, top_k=3)
    alone = [classifier.classify(image, top_k=3)[0] for image in images]
    for a, b in zip(together, alone):
        assert a.index == b.index
        np.testing.assert_allclose([t.score for t in a.top], [t.score for t in b.top], atol=1e-6)


def test_int8_io_bundle_is_fed_quantized_and_read_dequantized(bundles, tmp_path):
    classifier = ImageClassifier(bundles["int8"])
    [input_details], [output_details] = classifier.interpreter.get_input_details(), \
        classifier.interpreter.get_output_details()
    assert np.dtype(input_details["dtype"]) == np.int8 and np.dtype(output_details["dtype"]) == np.int8
    paths = [png(tmp_path / f"{name}.png", rgb) for name, rgb in COLOURS.items()]
    predictions = classifier.classify(paths, top_k=3)
    reference = ImageClassifier(bundles["fp32"]).classify(paths, top_k=3)
    assert [p.label for p in predictions] == list(COLOURS)
    for quantized, exact in zip(predictions, reference):
        # int8 logits in [-4, 4] have a step of ~8/255 = 0.03; a softmax probability near 1 moves by far less.
        assert quantized.score == pytest.approx(exact.score, abs=0.02)


def test_int8_io_equals_the_same_model_quantizing_its_own_float_input(bundles):
    """Regression: rounding half away from zero flipped a digit in benchmarks/accuracy_bit.py; the QUANTIZE op of
    a float-I/O int8 model rounds half to even, and [-1, 1] pixels often sit on exact .5 ties."""
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(8)]
    images += [np.full((SIZE, SIZE, 3), rgb, np.uint8) for rgb in COLOURS.values()]
    inputs = np.stack([preprocess(image, PREPROCESSING) for image in images])
    ours = ImageClassifier(bundles["int8"]).scores(inputs)
    theirs = ImageClassifier(bundles["int8_float_io"]).scores(inputs)
    # Same calibration, same integer kernels: identical logits, so identical softmax up to float32 rounding.
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)


def test_quantize_rounds_half_to_even_and_saturates():
    details = {"name": "x", "dtype": np.int8, "quantization": (0.5, -3)}
    q = quantize(np.array([0.25, -0.25, 0.75, 0.0, 1000.0, -1000.0], np.float32), details)
    np.testing.assert_array_equal(q, [0 - 3, 0 - 3, 2 - 3, -3, 127, -128])  # 0.5 -> 0, -0.5 -> 0, 1.5 -> 2
    np.testing.assert_allclose(dequantize(np.array([-3, 1], np.int8), details), [0.0, 2.0])
    unsigned = {"name": "x", "dtype": np.uint8, "quantization": (1 / 255, 0)}
    assert quantize(np.array([1.0, -1.0], np.float32), unsigned).tolist() == [255, 0]
    with pytest.raises(BundleError, match="no quantization scale"):
        quantize(np.zeros(1, np.float32), {"name": "x", "dtype": np.int8, "quantization": (0.0, 0)})


def test_a_bad_image_raises_in_classify_and_is_skipped_in_a_folder(bundles, tmp_path):
    folder = tmp_path / "mixed"
    png(folder / "a.png", COLOURS["red"])
    (folder / "b.txt").write_text("not an image")
    (folder / "c.jpg").write_bytes(b"")
    png(folder / "d.png", COLOURS["blue"])
    classifier = ImageClassifier(bundles["random"])
    results = list(classifier.classify_folder(folder, top_k=1))
    assert [type(r) for r in results] == [Prediction, Skipped, Skipped, Prediction]
    assert "b.txt" in results[1].reason and "c.jpg" in results[2].reason
    with pytest.raises(RuntimeLiteshipError, match="b.txt"):
        classifier.classify([folder / "a.png", folder / "b.txt"])
    with pytest.raises(RuntimeLiteshipError, match="top-k"):
        classifier.classify(folder / "a.png", top_k=0)


def test_bundles_that_do_not_fit_the_model_are_rejected(bundles, tmp_path):
    from liteship.convert.bundle import write_bundle

    model = bundles["fp32"] / "model.tflite"
    wrong_labels = write_bundle(tmp_path / "labels", model, family="classifier", task="image-classification",
                                quantization="fp32", preprocessing=PREPROCESSING, config={"output": "logits"},
                                assets={"labels": ("assets/labels.txt", b"cat\ndog\n")})
    with pytest.raises(BundleError, match="2 labels but the model outputs 3"):
        ImageClassifier(wrong_labels)
    wrong_size = write_bundle(tmp_path / "size", model, family="classifier", task="image-classification",
                              quantization="fp32", preprocessing=dict(PREPROCESSING, image_size=[32, 32]))
    with pytest.raises(BundleError, match="32x32"):
        ImageClassifier(wrong_size)
    no_block = write_bundle(tmp_path / "none", model, family="classifier", task="image-classification",
                            quantization="fp32")
    with pytest.raises(BundleError, match="preprocessing"):
        ImageClassifier(no_block)
    text = write_bundle(tmp_path / "text", model, family="gpt2", task="text-generation", quantization="fp32")
    with pytest.raises(BundleError, match="gpt2 bundle for text-generation, not an image classifier"):
        ImageClassifier(text)


# ----------------------------------------------------------------------------------------------- evaluate


@pytest.fixture()
def labeled(tmp_path):
    root = tmp_path / "labeled"
    for name, rgb in COLOURS.items():
        for i in range(3):
            png(root / name / f"{i}.png", rgb, size=(10 + i, 12))
    png(root / "red" / "wrong.png", COLOURS["blue"])  # a blue image labelled red: one deliberate miss
    (root / "green" / "readme.txt").write_text("hello")  # skipped, listed
    png(root / "stray.png", COLOURS["red"])  # not in a class folder: skipped, listed
    return root


def test_evaluate_counts_accuracy_per_class_and_skips(bundles, labeled):
    result = evaluate(bundles["fp32"], labeled)
    assert result["images"] == 10 and result["correct"] == 9
    assert result["accuracy"] == pytest.approx(0.9)
    assert result["top5_accuracy"] == 1.0  # 3 classes: the truth is always in the top 5
    assert result["per_class"]["red"] == {"label": "red", "images": 4, "correct": 3, "accuracy": 0.75}
    assert result["per_class"]["green"]["images"] == 3 and result["per_class"]["green"]["accuracy"] == 1.0
    reasons = sorted(s["path"] for s in result["skipped"])
    assert [p.rsplit("/", 1)[-1] for p in reasons] == ["readme.txt", "stray.png"]
    assert "reference" not in result


def test_evaluate_against_a_reference_bundle(bundles, labeled):
    result = evaluate(bundles["int8"], labeled, reference_bundle=bundles["fp32"])
    assert result["quantization"] == "int8"
    reference = result["reference"]
    assert reference["quantization"] == "fp32" and reference["compared"] == 10
    assert reference["top1_agreement"] == 1.0
    assert reference["accuracy_change"] == pytest.approx(0.0)
    against_random = evaluate(bundles["fp32"], labeled, reference_bundle=bundles["raw"])
    assert against_random["reference"]["top1_agreement"] == 1.0  # same labels, no softmax: same argmax


def test_evaluate_rejects_class_folders_that_match_no_label(bundles, tmp_path):
    png(tmp_path / "labeled" / "purple" / "0.png", (128, 0, 128))
    with pytest.raises(RuntimeLiteshipError, match="'purple' match no label"):
        evaluate(bundles["fp32"], tmp_path / "labeled")
    with pytest.raises(RuntimeLiteshipError, match="not a folder"):
        evaluate(bundles["fp32"], tmp_path / "absent")


def test_class_folders_match_labels_loosely(bundles, tmp_path):
    png(tmp_path / "labeled" / "RED" / "0.png", COLOURS["red"])
    png(tmp_path / "labeled" / "blue" / "0.png", COLOURS["blue"])
    assert evaluate(bundles["fp32"], tmp_path / "labeled")["accuracy"] == 1.0


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_run_folder_json_reports_skips(bundles, labeled):
    result = CliRunner().invoke(run_command, [str(bundles["fp32"]), str(labeled / "green"), "--json", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [p["top_k"][0]["label"] for p in document["predictions"]] == ["green"] * 3
    assert len(document["predictions"][0]["top_k"]) == 2
    assert [s["path"].rsplit("/", 1)[-1] for s in document["skipped"]] == ["readme.txt"]


def test_cli_run_table_and_errors(bundles, labeled, tmp_path, capsys):
    from liteship.cli import main

    result = CliRunner().invoke(run_command, [str(bundles["fp32"]), str(labeled / "red" / "0.png"), "--top-k", "1"])
    assert result.exit_code == 0, result.output
    assert "red" in result.stdout and "0.9993" in result.stdout
    (tmp_path / "note.txt").write_text("hi")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # through the real CLI tree: one line, exit 1, no traceback
        main(["run", "bit", str(bundles["fp32"]), str(tmp_path / "note.txt")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("skipped") and "error:" in err and "note.txt" in err and "Traceback" not in err


def test_cli_eval_unknown_class_is_a_one_line_error(bundles, tmp_path, capsys):
    from liteship.cli import main

    png(tmp_path / "labeled" / "purple" / "0.png", (128, 0, 128))
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "bit", str(bundles["fp32"]), str(tmp_path / "labeled")])
    assert exit_info.value.code == 1
    assert "error: class folder(s) 'purple' match no label" in capsys.readouterr().err


def test_cli_eval_text_and_json(bundles, labeled):
    result = CliRunner().invoke(eval_command, [str(bundles["int8"]), str(labeled), "--reference", str(bundles["fp32"])])
    assert result.exit_code == 0, result.output
    assert "accuracy    90.00%" in result.stdout and "+0.00 points" in result.stdout
    assert "readme.txt" in result.stderr
    result = CliRunner().invoke(eval_command, [str(bundles["fp32"]), str(labeled), "--json"])
    assert json.loads(result.stdout)["accuracy"] == pytest.approx(0.9)


# ---------------------------------------------------------------------------------------- a real BiT bundle


def random_bit_npz(path, config, seed=0):
    """Random weights for `config` in the original BiT .npz naming, from the converter's own name table."""
    from liteship.convert.bit import weights as W

    rng = np.random.default_rng(seed)
    tensors = {}
    for name, target in W.expected_tensors(config).items():
        if target.weight == "gamma":
            value = 1.0 + 0.1 * rng.standard_normal(target.shape)
        elif target.weight in ("beta", "bias"):
            value = 0.1 * rng.standard_normal(target.shape)
        else:  # kernels: the loader standardizes conv kernels; the head is used as is
            value = rng.standard_normal(target.shape) * (0.05 if name == W.HEAD_KERNEL else 1.0)
        tensors[W.PREFIX + name] = value.astype(np.float32)
    np.savez(path, **tensors)
    return path


def test_bit_bundle_from_the_bit_converter_matches_its_keras_model(tmp_path):
    """`export_bit` writes the manifest; the runtime reads it back and reproduces the tf_keras BiT."""
    pytest.importorskip("tf_keras")
    from liteship.convert.bit.config import tiny
    from liteship.convert.bit.export import build_keras, export_bit, load_checkpoint

    config = tiny(num_classes=7, image_size=32)
    npz = random_bit_npz(tmp_path / "bit.npz", config)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(7)))
    bundle = export_bit(npz, tmp_path / "bit-fp32", variant=config, quant="fp32", labels=labels, image_size=32)

    classifier = ImageClassifier(bundle)
    assert classifier.softmax  # the BiT converter says "output": "logits"
    assert classifier.preprocessing.image_size == (32, 32) and classifier.preprocessing.mean == (0.5,) * 3
    images = photos()  # 300x451 to 512x512, colour, greyscale and RGBA: all shrink to 32x32
    predictions = classifier.classify(images, top_k=7)

    keras = build_keras(load_checkpoint(npz, config), image_size=32, batch_size=None)
    logits = keras(np.stack([preprocess(p, bundle_preprocessing(bundle)) for p in images])).numpy()
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    for prediction, row in zip(predictions, probabilities):
        assert prediction.label == f"class {row.argmax()}"
        ours = np.array([t.score for t in sorted(prediction.top, key=lambda t: t.index)])
        # fp32 TFLite vs tf_keras on identical inputs through ~20 GroupNorm/conv layers: 1e-4 absolute on
        # probabilities is ~10x the float32 drift we observe and far below any change of label.
        np.testing.assert_allclose(ours, row, atol=1e-4)


def bundle_preprocessing(bundle):
    return json.loads((bundle / "manifest.json").read_text())["preprocessing"]


def test_a_batch_that_is_dynamic_only_in_name_falls_back_to_one_image_at_a_time(tmp_path):
    """Input shape [-1, 16, 16, 3] but a reshape to [1, 3] inside: batching fails, one-by-one must not."""
    import tensorflow as tf

    from liteship.convert.bundle import write_bundle
    from liteship.convert.tflite import convert_saved_model

    weights = tf.constant(np.random.default_rng(3).standard_normal((SIZE * SIZE * 3, 3)).astype(np.float32))

    class FixedInside(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="image")])
        def __call__(self, image):
            flat = tf.reshape(image, [1, SIZE * SIZE * 3])  # (1, 768): silently assumes batch 1
            return tf.reshape(tf.matmul(flat, weights), [1, 3])

    module = FixedInside()
    tf.saved_model.save(module, str(tmp_path / "saved"), signatures=module.__call__)
    tflite, _ = convert_saved_model(tmp_path / "saved", "fp32")
    bundle = write_bundle(tmp_path / "fixed-inside", tflite, family="classifier", task="image-classification",
                          quantization="fp32", preprocessing=PREPROCESSING, config={"output": "logits"})
    classifier = ImageClassifier(bundle)
    assert classifier.batch_size is None  # the file says any batch
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(3)]
    together = classifier.classify(images, top_k=3)
    assert classifier.batch_size == 1  # it fell back
    for image, prediction in zip(images, together):
        logits = preprocess(image, PREPROCESSING).reshape(1, -1) @ weights.numpy()
        assert prediction.index == int(logits.argmax())
