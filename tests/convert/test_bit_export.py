"""BiT conversion: tiny random checkpoint in the released npz naming -> tf_keras -> .tflite bundles.

Everything uses the tiny config (~2M params, 64x64 input) and scikit-image's sample photos; nothing downloads.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from liteship.convert.bit.config import tiny  # noqa: E402
from liteship.convert.bit.export import build_keras, export_bit, load_checkpoint  # noqa: E402
from liteship.errors import ConvertError  # noqa: E402
from tests.convert.bit_fixtures import (  # noqa: E402
    bit_tensors,
    sample_images,
    to_bit_range,
    write_bit_npz,
    write_hub_style_saved_model,
    write_image_folder,
)
from tests.convert.bit_reference import reference_logits  # noqa: E402
from tests.xnnpack_coverage import xnnpack_coverage  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return write_bit_npz(tmp_path_factory.mktemp("bit") / "BiT-tiny.npz", tiny())


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("calibration"))  # 6 scikit-image photos, original sizes


@pytest.fixture(scope="module")
def images():
    return to_bit_range(sample_images(SIZE))  # (5, 64, 64, 3) in [-1, 1]


@pytest.fixture(scope="module")
def keras_logits(npz, images):
    return build_keras(load_checkpoint(npz, "tiny"), image_size=SIZE, batch_size=None)(images).numpy()


class Bundles(dict):
    """Bundles by quantization mode, each converted on first use and kept for the module."""

    def __init__(self, npz, calibration, out):
        super().__init__()
        self.npz, self.calibration, self.out = npz, calibration, out

    def __missing__(self, quant):
        self[quant] = export_bit(self.npz, self.out / quant, variant="tiny", quant=quant, image_size=SIZE,
                                 calibration=self.calibration if quant == "int8" else None)
        return self[quant]


@pytest.fixture(scope="module")
def bundles(npz, calibration, tmp_path_factory):
    return Bundles(npz, calibration, tmp_path_factory.mktemp("bundles"))


def run_tflite(bundle, images):
    from liteship.runtime.classify import dequantize, quantize
    from liteship.runtime.interpreter import create_interpreter

    interpreter = create_interpreter(bundle / "model.tflite")
    runner = interpreter.get_signature_runner()
    (name, details), = runner.get_input_details().items()
    (out_name, out_details), = runner.get_output_details().items()
    rows = [dequantize(runner(**{name: quantize(image[None], details)})[out_name], out_details) for image in images]
    return np.concatenate(rows)


def cosines(a, b):
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("groupnorm", ["channelmean", "matmul", "reshape"])
def test_keras_model_matches_independent_reference(npz, images, groupnorm):
    """tf_keras (baked weight standardization, re-expressed GroupNorm) vs torch (in-graph WS, nn.GroupNorm)."""
    tensors = dict(np.load(npz))
    config = tiny()
    expected = reference_logits(tensors, images, block_units=config.block_units, width_factor=1,
                                base_width=config.base_width)
    got = build_keras(load_checkpoint(npz, "tiny"), image_size=SIZE, groupnorm=groupnorm,
                      batch_size=None)(images).numpy()
    # float32 through ~20 layers in two frameworks: measured 7e-6 max abs on logits of magnitude ~1.7; 1e-4 * max.
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())


def test_forgetting_weight_standardization_would_be_caught(npz, images, keras_logits):
    """The fixture's kernels are not standardized, so the reference test above has teeth."""
    from liteship.convert.bit import weights as W

    checkpoint = load_checkpoint(npz, "tiny")
    raw = W.normalize_names(W.read_npz(npz), "x")
    for scope, values in checkpoint.layers.items():
        if "standardized_conv2d" in scope:
            values["kernel"] = raw[scope + "/kernel"]
    unstandardized = build_keras(checkpoint, image_size=SIZE, batch_size=None)(images).numpy()
    assert np.abs(unstandardized - keras_logits).max() > 0.05 * np.abs(keras_logits).max()


def test_fp32_tflite_matches_keras(bundles, images, keras_logits):
    got = run_tflite(bundles["fp32"], images)
    # Same float32 math in another kernel library (XNNPACK); measured 1.6e-6 relative. 1e-5 of the logit scale.
    np.testing.assert_allclose(got, keras_logits, atol=1e-5 * np.abs(keras_logits).max())


@pytest.mark.slow  # one tiny conversion each, ~10-20 s on 2 busy cores
def test_fp16_within_tolerance_on_real_images(bundles, images, keras_logits):
    got = run_tflite(bundles["fp16"], images)
    scale = np.abs(keras_logits).max()
    # fp16 weights (11-bit mantissa, ~5e-4 relative each): measured 1.4e-3 of the logit scale; allow 5e-3.
    assert np.abs(got - keras_logits).max() <= 5e-3 * scale
    assert np.array_equal(got.argmax(1), keras_logits.argmax(1))


@pytest.mark.slow  # one tiny conversion each, ~10-20 s on 2 busy cores
def test_dynamic_int8_within_tolerance_on_real_images(bundles, images, keras_logits):
    got = run_tflite(bundles["dynamic-int8"], images)
    # int8 weights, activations quantized per batch at run time: measured 7e-2 of the logit scale and cosine
    # 0.997 on this random net; allow 0.15 and 0.99.
    assert np.abs(got - keras_logits).max() <= 0.15 * np.abs(keras_logits).max()
    assert cosines(got, keras_logits).min() >= 0.99


@pytest.mark.slow  # one tiny conversion each, ~10-20 s on 2 busy cores
def test_int8_within_tolerance_on_real_images(bundles, images, keras_logits):
    got = run_tflite(bundles["int8"], images)
    # Full int8 calibrated on 6 photos, evaluated on 5 of them at 64x64, where block4 maps are 2x2 so GroupNorm
    # statistics are as noisy as they get: measured 0.20 of the logit scale and cosine 0.970. Allow 0.3 / 0.95;
    # the accuracy benchmark (benchmarks/) measures what int8 costs on a trained BiT.
    assert np.abs(got - keras_logits).max() <= 0.3 * np.abs(keras_logits).max()
    assert cosines(got, keras_logits).min() >= 0.95
    assert (got.argmax(1) == keras_logits.argmax(1)).mean() >= 0.8


@pytest.mark.slow  # one tiny conversion each, ~10-20 s on 2 busy cores
def test_int8_is_fully_integer_and_xnnpack_takes_all_but_rsqrt(bundles):
    manifest = json.loads((bundles["int8"] / "manifest.json").read_text())
    ops = manifest["conversion"]["op_counts"]
    assert ops["QUANTIZE"] == 1 and ops["DEQUANTIZE"] == 1  # only at the float input and output
    # Finding with ai-edge-litert 2.3 (docs/bit_groupnorm.md): XNNPACK has no int8 RSQRT, and refuses the int8
    # ADD of GroupNorm's 1e-5 epsilon next to it; one of each per GroupNorm (13 in the tiny net), on tiny
    # (1, 1, G, 1) tensors. Everything else is delegated (17 partitions measured here, 50 in R50x1).
    coverage = xnnpack_coverage(bundles["int8"] / "model.tflite")
    assert coverage["undelegated"] == {"ADD": 13, "RSQRT": 13}
    assert coverage["partitions"] <= 2 * 13 + 1  # at most two gaps per GroupNorm
    fp32 = xnnpack_coverage(bundles["fp32"] / "model.tflite")
    assert fp32["undelegated"] == {} and fp32["partitions"] == 1 and fp32["delegated"] == fp32["nodes"]


def test_manifest_preprocessing_block_is_exact(bundles):
    manifest = json.loads((bundles["fp32"] / "manifest.json").read_text())
    assert manifest["family"] == "bit" and manifest["task"] == "image-classification"
    assert manifest["preprocessing"] == {
        "image_size": [SIZE, SIZE], "resize": "bilinear", "crop": "none", "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5], "input_range": [-1, 1], "channels": "RGB", "layout": "NHWC"}
    assert manifest["config"]["num_classes"] == 10 and manifest["config"]["output"] == "logits"
    assert manifest["config"]["image_size"] == SIZE
    (spec,) = manifest["signatures"]["serving_default"]["outputs"]
    assert spec["name"] == "logits" and spec["shape"] == [1, 10]
    assert manifest["source"]["format"] == "bit-npz"


@pytest.mark.slow  # one tiny conversion each, ~10-20 s on 2 busy cores
def test_int8_size_ratio(bundles):
    sizes = {q: (b / "model.tflite").stat().st_size for q, b in bundles.items()}
    assert sizes["int8"] <= 0.3 * sizes["fp32"]  # int8 weights: ~1/4 of fp32 plus per-channel scales
    assert sizes["fp16"] <= 0.55 * sizes["fp32"]


@pytest.mark.slow  # one tiny conversion each, ~10-20 s on 2 busy cores
@pytest.mark.parametrize("io_type,zero_point", [("uint8", 127), ("int8", -1)])
def test_integer_io_for_edge_tpu(npz, calibration, images, keras_logits, tmp_path, io_type, zero_point):
    bundle = export_bit(npz, tmp_path / io_type, variant="tiny", quant="int8", io_type=io_type, image_size=SIZE,
                        calibration=calibration)
    manifest = json.loads((bundle / "manifest.json").read_text())
    (inp,) = manifest["signatures"]["serving_default"]["inputs"]
    (out,) = manifest["signatures"]["serving_default"]["outputs"]
    assert inp["dtype"] == io_type and out["dtype"] == io_type and manifest["io_type"] == io_type
    # [-1, 1] over 256 steps; the zero point puts pixel p at about q = p (uint8) or p - 128 (int8)
    assert inp["quantization"]["scale"] == pytest.approx(2 / 255, rel=1e-3)
    assert inp["quantization"]["zero_point"] == zero_point
    got = run_tflite(bundle, images)
    assert cosines(got, keras_logits).min() >= 0.95  # same bound as float-io int8


def test_labels_must_match_the_head(npz, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    with pytest.raises(ConvertError, match="has 2 labels but the checkpoint head has 10 classes"):
        export_bit(npz, tmp_path / "c", variant="tiny", image_size=SIZE, labels=labels)


def test_int8_without_calibration_refuses(npz, tmp_path):
    with pytest.raises(ConvertError, match="needs --calibration"):
        export_bit(npz, tmp_path / "x", variant="tiny", quant="int8")
    assert not (tmp_path / "x").exists()


def test_bad_sources_name_the_problem(tmp_path):
    missing = write_bit_npz(tmp_path / "m.npz", tiny(), drop=("resnet/block4/unit01/c/standardized_conv2d/kernel",))
    with pytest.raises(ConvertError, match="missing tensor 'resnet/block4/unit01/c/standardized_conv2d/kernel'"):
        export_bit(missing, tmp_path / "o1", variant="tiny")
    wrong = write_bit_npz(tmp_path / "w.npz", tiny(),
                          override={"resnet/group_norm/gamma": np.ones(3, np.float32)})
    with pytest.raises(ConvertError, match=r"'resnet/group_norm/gamma' has shape \(3,\), expected \(1024,\)"):
        export_bit(wrong, tmp_path / "o2", variant="tiny")
    with pytest.raises(ConvertError, match="unknown BiT variant 'R18x1'"):
        export_bit(missing, tmp_path / "o3", variant="R18x1")
    with pytest.raises(ConvertError, match="not found"):
        export_bit(tmp_path / "absent.npz", tmp_path / "o4", variant="tiny")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


@pytest.mark.slow  # saves a SavedModel, runs it, converts: ~20 s per case
@pytest.mark.parametrize("module_range,expected_range", [((0.0, 1.0), [-1, 1]), ((-1.0, 1.0), [0, 1])])
def test_hub_style_saved_model_source(tmp_path, module_range, expected_range):
    """A SavedModel is read by variable names, rebuilt, and checked against its own outputs. A module that takes
    [0, 1] and rescales inside needs [-1, 1] fed to the rebuilt weights; one that passes input through needs
    [0, 1]: the manifest must say which, and the bundle must reproduce the module on a real photo."""
    import tensorflow as tf

    tensors = bit_tensors(tiny(), seed=3)
    saved = write_hub_style_saved_model(tmp_path / "hub", tensors, block_units=tiny().block_units,
                                        input_range=module_range)
    bundle = export_bit(saved, tmp_path / "bundle", variant="tiny", image_size=SIZE)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["preprocessing"]["input_range"] == expected_range
    assert manifest["source"]["format"] == "saved-model"
    photo01 = sample_images(SIZE)[:2].astype(np.float32) / 255.0
    want = tf.saved_model.load(str(saved))(photo01).numpy()
    mean, std = manifest["preprocessing"]["mean"][0], manifest["preprocessing"]["std"][0]
    got = run_tflite(bundle, (photo01 - mean) / std)
    # Three float32 implementations apart (TF in-graph WS + 5-D GN, our baked WS + matmul GN, XNNPACK).
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())


def test_saved_model_that_is_not_bit_is_refused(tmp_path):
    import tensorflow as tf

    module = tf.Module()
    module.v = tf.Variable(np.zeros(3, np.float32), name="dense/kernel")
    tf.saved_model.save(module, str(tmp_path / "sm"))
    with pytest.raises(ConvertError, match="sm"):
        export_bit(tmp_path / "sm", tmp_path / "out", variant="tiny")


def test_cli_converts_and_reports_errors_in_one_line(npz, tmp_path):
    from click.testing import CliRunner

    from liteship.convert.bit.cli import command

    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(10)) + "\n")
    runner = CliRunner()
    result = runner.invoke(command, [str(npz), "--out", str(tmp_path / "b"), "--variant", "BiT-M-tiny",
                                     "--image-size", str(SIZE), "--quant", "fp16", "--labels", str(labels),
                                     "--groupnorm", "reshape"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["quantization"] == "fp16" and manifest["assets"] == {"labels": "assets/labels.txt"}
    assert manifest["config"]["groupnorm_lowering"] == "reshape"
    assert "FULLY_CONNECTED" not in manifest["conversion"]["op_counts"] or \
        manifest["conversion"]["op_counts"]["FULLY_CONNECTED"] == 1  # only the head: no grouping matrices
    assert (tmp_path / "b" / "assets" / "labels.txt").read_text().splitlines()[3] == "class 3"
    result = runner.invoke(command, [str(npz), "--out", str(tmp_path / "c"), "--variant", "R51x1"])
    assert isinstance(result.exception, ConvertError) and "R51x1" in str(result.exception)


def test_runtime_on_a_photo_equals_bits_own_eval_pipeline(bundles, npz, calibration):
    """The contract with the runtime, end to end: `liteship run bit` on a PNG of any size must equal BiT's eval
    input pipeline (input_pipeline_tf2_or_jax.py: tf.image.resize to the input size, (x - 127.5) / 127.5) fed to
    the tf_keras model. The runtime never sees TensorFlow; it only follows the manifest's preprocessing block."""
    import tensorflow as tf
    from PIL import Image

    from liteship.runtime.classify import ImageClassifier

    path = calibration / "chelsea.png"  # 451x300 cat photo from scikit-image
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    x = (tf.image.resize(pixels[None], [SIZE, SIZE]).numpy() - 127.5) / 127.5
    logits = build_keras(load_checkpoint(npz, "tiny"), image_size=SIZE)(x).numpy()[0]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    (prediction,) = ImageClassifier(bundles["fp32"]).classify([str(path)], top_k=3)
    top = prediction.to_dict()["top_k"]
    assert [t["index"] for t in top] == list(np.argsort(-probs)[:3])
    # float32 resize arithmetic in numpy vs TF plus 1e-6-level model differences; probabilities agree to 1e-4.
    np.testing.assert_allclose([t["score"] for t in top], np.sort(probs)[::-1][:3], atol=1e-4)


def test_pruning_can_wrap_the_whole_model():
    """Pruning wraps the re-authored BiT with tfmot; GroupNorm must not block it (nor be pruned)."""
    tfmot = pytest.importorskip("tensorflow_model_optimization")
    from liteship.convert.bit.model import build_model

    pruned = tfmot.sparsity.keras.prune_low_magnitude(build_model(tiny()))
    wrapped = {layer.layer.__class__.__name__: layer for layer in pruned.layers if hasattr(layer, "pruning_vars")}
    assert {"Conv2D", "Dense", "GroupNorm"} <= set(wrapped)
    assert wrapped["Conv2D"].pruning_vars  # convolutions get masks
    assert not wrapped["GroupNorm"].pruning_vars  # gamma/beta do not
