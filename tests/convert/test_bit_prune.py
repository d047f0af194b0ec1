"""BiT pruning and QAT on a tiny BiT (3 classes, 32x32) fine-tuned a few steps on scikit-learn digits.

Every pruned .npz goes back through the real paths: liteship's loader and converter, and the independent PyTorch
reference (tests/convert/bit_reference.py), which reads the npz by its own names and widths.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_model_optimization")

from liteship.convert import prune as P  # noqa: E402
from liteship.convert.bit.config import tiny  # noqa: E402
from liteship.errors import ConvertError  # noqa: E402
from tests.convert.bit_fixtures import write_bit_npz  # noqa: E402
from tests.convert.bit_reference import reference_logits  # noqa: E402

SIZE = 32
CONFIG = tiny(num_classes=3, image_size=SIZE)


def write_digit_folder(root, classes=3, per_class=10):
    """8x8 scikit-learn digits as greyscale PNGs, one sub-folder per class (c0, c1, ...)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for cls in range(classes):
        folder = root / f"c{cls}"
        folder.mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(digits.target == cls)[:per_class]):
            pixels = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{j:02d}.png")
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("bit-prune")
    write_digit_folder(root / "digits")
    write_bit_npz(root / "source.npz", CONFIG)
    return root


def prune(work, name, **options):
    from liteship.convert.bit.prune import prune_bit

    convert = options.pop("convert", False)
    opts = P.PruneOptions(**{"steps": 2, "batch_size": 8, **options})
    record = prune_bit(work / "source.npz", work / f"{name}.npz", work / "digits", opts, variant=CONFIG,
                       image_size=SIZE, convert=convert)
    return work / f"{name}.npz", record


@pytest.fixture(scope="module", params=["uniform", "global"])
def structured(work, request):
    return prune(work, f"structured-{request.param}", method="structured", sparsity=0.4, allocation=request.param)


@pytest.fixture(scope="module")
def magnitude(work):
    return prune(work, "magnitude", method="magnitude", sparsity=0.5, steps=4, convert=True)


def images(n=4):
    from tests.convert.bit_fixtures import sample_images, to_bit_range

    return to_bit_range(sample_images(SIZE))[:n]


def keras_logits(npz, x):
    from liteship.convert.bit.export import build_keras, load_checkpoint

    return build_keras(load_checkpoint(npz, CONFIG), image_size=SIZE, batch_size=None)(x).numpy()


def test_structured_npz_is_narrower_and_groupnorm_valid(structured):
    from liteship.convert.bit.export import load_checkpoint

    npz, record = structured
    config = load_checkpoint(npz, CONFIG).config
    assert config.unit_widths is not None
    for block, (width_a, width_b) in enumerate(config.unit_widths):
        full = CONFIG.bottleneck_width(block)
        assert width_a % CONFIG.num_groups == 0 and width_b % CONFIG.num_groups == 0
        assert CONFIG.num_groups <= width_a <= full and CONFIG.num_groups <= width_b <= full
    assert sum(a + b for a, b in config.unit_widths) < sum(2 * CONFIG.bottleneck_width(b) for b in range(4))
    assert record["params"]["after"] < record["params"]["before"]
    assert record["params"]["after"] == sum(v.size for v in np.load(npz).values())


def test_structured_removes_the_fraction_asked(structured):
    """40% of all a and b output channels, within one channel per GroupNorm group of one convolution (the step the
    global allocation removes in) for either allocation."""
    npz, record = structured
    from liteship.convert.bit.export import load_checkpoint

    widths = load_checkpoint(npz, CONFIG).config.unit_widths
    total = sum(2 * CONFIG.bottleneck_width(b) for b in range(4))
    removed = total - sum(a + b for a, b in widths)
    assert record["sparsity"]["measured"] == pytest.approx(removed / total)
    assert abs(removed / total - 0.4) <= CONFIG.num_groups / total / 2 + 1e-9
    assert record["requested"]["allocation"] in ("uniform", "global")


def test_global_allocation_takes_the_costly_channels_first():
    """Equal importance everywhere: the steps go where a channel costs the most multiply-accumulates (block1's at
    the highest resolution), never below one channel per group, and the count removed is the one asked."""
    from liteship.convert.bit.prune import channel_costs, global_keep_counts

    config = CONFIG.replace(base_width=64)
    groups = config.num_groups
    scores = [(np.ones(config.bottleneck_width(b)), np.ones(config.bottleneck_width(b))) for b in range(4)]
    costs = channel_costs(config, 32)
    assert costs[0][0] > costs[1][0] > costs[2][0] > costs[3][0]  # the same channel costs less deeper down
    keep = global_keep_counts(scores, costs, groups, 0.4)
    total = sum(2 * config.bottleneck_width(b) for b in range(4))
    assert total - groups * sum(a + b for a, b in keep) == round(0.4 * total / groups) * groups
    assert keep[0] == (1, 1) and keep[1] == (1, 1) and keep[2] == (1, 1)  # blocks 1-3 as narrow as valid
    assert min(min(pair) for pair in keep) >= 1
    # one unimportant layer: the ranking is per unit of compute after normalising within each layer, so a layer
    # whose channels are all alike is no cheaper to cut than another; a layer with a few weak channels is
    weak = [tuple(s.copy() for s in pair) for pair in scores]
    weak[3][1][::16] = 0.01  # one weak channel in every group of block4's b
    keep_weak = global_keep_counts(weak, costs, groups, 0.4)
    assert keep_weak[3][1] < keep[3][1]


def assert_agrees_with_the_pytorch_reference(npz) -> None:
    """The .npz read by liteship (tf_keras, baked standardization) and by the independent torch BiT agree: as in
    test_bit_export, float32 through ~20 layers in two frameworks, within 1e-4 of the logit scale."""
    x = images()
    expected = reference_logits(dict(np.load(npz)), x, block_units=CONFIG.block_units, width_factor=1,
                                base_width=CONFIG.base_width)
    np.testing.assert_allclose(keras_logits(npz, x), expected, atol=1e-4 * np.abs(expected).max())


def test_structured_npz_agrees_with_the_pytorch_reference(structured):
    assert_agrees_with_the_pytorch_reference(structured[0])


def test_structured_bundle_equals_the_pruned_model_and_records_the_pruning(structured, tmp_path):
    from liteship.convert.bit.export import export_bit
    from tests.convert.test_bit_export import run_tflite

    npz, record = structured
    bundle = export_bit(npz, tmp_path / "bundle", variant=CONFIG, image_size=SIZE)
    x = images()
    want = keras_logits(npz, x)
    # fp32 TFLite vs tf_keras, the tolerance test_bit_export uses: 1e-5 of the logit scale
    np.testing.assert_allclose(run_tflite(bundle, x), want, atol=1e-5 * np.abs(want).max())
    manifest = json.loads((bundle / "manifest.json").read_text())
    pruning = manifest["conversion"]["pruning"]
    assert pruning["method"] == "structured" and pruning["requested"]["sparsity"] == 0.4
    assert pruning["sparsity"] == record["sparsity"] and 0.3 < pruning["sparsity"]["measured"] < 0.6
    assert manifest["config"]["unit_widths"] == record["unit_widths"]


def test_magnitude_sparsity_survives_standardization_and_conversion(magnitude):
    from liteship.convert.bit import weights as W

    npz, record = magnitude
    tensors = dict(np.load(npz))
    pruned = [name for name in tensors if name.endswith("/kernel") and "root_block" not in name
              and "head" not in name]
    for name in pruned:
        # TFMOT's mask on each kernel reaches the target to one element; the stem and head stay dense
        assert abs(P.zero_fraction([tensors[name]]) - 0.5) <= P.SPARSITY_TOLERANCE, name
        # saved kernels are standardization's fixed point with their zeros, so the loader keeps them sparse
        standardized = W.standardize_kernel(tensors[name])
        np.testing.assert_allclose(standardized, tensors[name], atol=1e-5)
        assert np.array_equal(standardized == 0, tensors[name] == 0)
    assert P.zero_fraction([tensors[W.PREFIX + W.ROOT_KERNEL]]) == 0
    assert abs(record["sparsity"]["measured"] - 0.5) <= P.SPARSITY_TOLERANCE
    # the zeros reach the .tflite: gzip shrinks with them, the plain file does not
    assert record["tflite"]["after"]["gzip_bytes"] < 0.8 * record["tflite"]["before"]["gzip_bytes"]
    quality = record["quality"]
    assert set(quality) == {"before", "after_pruning", "after_fine_tuning", "after_conversion"}
    assert quality["after_conversion"] == pytest.approx(quality["after_fine_tuning"], abs=1 / 3)


def test_magnitude_zeros_are_exact_in_the_converted_model(magnitude, tmp_path):
    """Every zero of the pruned kernels is an exact zero in the .tflite's convolution weights (not a 1e-9 that
    re-standardization would leave, which no longer compresses)."""
    from tensorflow.lite.tools import flatbuffer_utils

    from liteship.convert.bit.export import export_bit

    npz, _ = magnitude
    bundle = export_bit(npz, tmp_path / "fp32", variant=CONFIG, image_size=SIZE)
    model = flatbuffer_utils.read_model(str(bundle / "model.tflite"))
    conv_zeros = 0
    for tensor in model.subgraphs[0].tensors:
        data = model.buffers[tensor.buffer].data
        if data is not None and len(tensor.shape) == 4 and len(data):
            conv_zeros += int(np.count_nonzero(np.frombuffer(bytes(data), np.float32) == 0))
    tensors = dict(np.load(npz))
    want = sum(int(np.count_nonzero(v == 0)) for name, v in tensors.items() if name.endswith("conv2d/kernel"))
    assert want > 0 and conv_zeros == want


def test_strip_pruning_leaves_no_wrappers():
    from liteship.convert.bit.prune import prunable_layer_names, wrap_for_pruning
    from liteship.convert.bit.train import training_model

    model = training_model(CONFIG, SIZE)
    names = prunable_layer_names(model, prune_ends=False)
    wrapped = wrap_for_pruning(model, names, P.PruneOptions(method="magnitude", steps=2))
    assert sum(P.wrapped_for_pruning(layer) for layer in wrapped.layers) == len(names)
    stripped = P.strip_pruning(wrapped)
    assert not any(P.wrapped_for_pruning(layer) for layer in stripped.layers)
    assert not any("mask" in w.name or "pruning_step" in w.name for w in stripped.weights)


@pytest.mark.slow  # a third prune run, ~15 s
def test_two_four_pattern(work):
    npz, record = prune(work, "two-four", method="magnitude", m_by_n=(2, 4), sparsity=0.0)
    tensors = dict(np.load(npz))
    for name, kernel in tensors.items():
        if name.endswith("standardized_conv2d/kernel") and "root_block" not in name:
            blocks = kernel.transpose(3, 0, 1, 2).reshape(-1, 4)  # TFLite's [O, H, W, I], 4 along I
            assert (np.count_nonzero(blocks == 0, axis=1) >= 2).all(), name
    assert record["requested"]["m_by_n"] == "2:4"
    assert abs(record["sparsity"]["measured"] - 0.5) <= P.SPARSITY_TOLERANCE


@pytest.mark.slow  # QAT fine-tuning plus an int8 conversion, ~15 s
def test_qat_gives_a_valid_int8_bundle(work, tmp_path):
    from liteship.convert.bit.export import export_bit
    from liteship.runtime.bundle import Bundle
    from liteship.runtime.tflite_file import read_model
    from tests.convert.test_bit_export import run_tflite

    npz, record = prune(work, "qat", method="none", sparsity=0.0, qat=True)
    assert record["qat"] is True and record["method"] == "none"
    bundle = export_bit(npz, tmp_path / "int8", variant=CONFIG, image_size=SIZE, quant="int8",
                        calibration=work / "digits", io_type="int8")
    opened = Bundle.open(bundle)
    assert opened.quantization == "int8" and opened.manifest["conversion"]["pruning"]["qat"] is True
    info = read_model(bundle / "model.tflite")
    assert "CONV_2D" in info.op_counts()
    (signature,) = info.signature_specs().values()
    assert [spec["dtype"] for spec in signature["inputs"] + signature["outputs"]] == ["int8", "int8"]
    x = images()
    got = run_tflite(bundle, x)
    want = keras_logits(npz, x)
    assert np.isfinite(got).all()
    cosine = np.sum(got * want, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() > 0.9  # int8 of the QAT weights tracks the float model


def test_qat_ranges_start_from_the_float_activations():
    """Not TFMOT's [-6, 6]: BiT activations leave it, and an EMA of decay 0.999 would not catch up in a fine-tune."""
    import tf_keras

    from liteship.convert.bit.prune import learned_range_values, quantize_aware
    from liteship.convert.bit.train import training_model

    model = training_model(CONFIG, SIZE)
    x = images()
    ranges = learned_range_values(quantize_aware(model, x))
    for name in ("block4__unit01__add", "group_norm__relu", "head__conv2d"):
        want = tf_keras.Model(model.inputs, model.get_layer(name).output).predict(x, verbose=0)
        assert ranges[name] == pytest.approx((min(want.min(), 0.0), max(want.max(), 0.0)), rel=1e-5)
        assert ranges[name] != (-6.0, 6.0)
    assert ranges["group_norm__relu"][0] == 0.0  # a ReLU's range starts at zero and stays there


# ---- quantization-aware training's learned ranges, through to the int8 bundle ---------------------------------

def qat_sites() -> set[str]:
    """Every tensor `quantize_aware` gives a learned range, by the checkpoint's site names."""
    from liteship.convert.bit.model import GroupNorm, build_model

    model = build_model(CONFIG, image_size=SIZE)
    sites = set()
    for layer in model.layers:
        kind = type(layer).__name__
        if isinstance(layer, GroupNorm):
            sites |= {f"{layer.name}.scale", f"{layer.name}.scaled"}
        elif kind in ("Conv2D", "ReLU", "Add", "GlobalAveragePooling2D", "Dense"):
            sites.add(layer.name)
    return sites


def int8_scales(bundle) -> list[tuple[float, int]]:
    """(scale, zero point) of every per-tensor quantized tensor of the bundle's model."""
    from liteship.runtime.interpreter import create_interpreter

    found = []
    for detail in create_interpreter(bundle / "model.tflite").get_tensor_details():
        params = detail["quantization_parameters"]
        if len(params["scales"]) == 1:
            found.append((float(params["scales"][0]), int(params["zero_points"][0])))
    return found


def implied(low: float, high: float) -> tuple[float, int]:
    """The int8 (scale, zero point) a range gives: 256 levels over [low, high], zero on the grid."""
    scale = (high - low) / 255.0
    return scale, int(round(-128 - low / scale))


def has_scale(found, want) -> bool:
    return any(abs(scale - want[0]) <= 1e-5 * want[0] and zero == want[1] for scale, zero in found)


def test_learned_range_shrinks_to_clip_an_outlier():
    """One value 200x the others that matters 200x less downstream (as a pre-head outlier channel does, whose head
    weights were divided by as much): rounding the 999 others to the outlier's step costs more than clipping it,
    and the range learns that. TensorFlow's own fake-quant gradient counts only the clipped values (none at the
    start), so with it the range could not shrink; the rounding-error gradient is what shrinks it."""
    import tensorflow as tf
    import tf_keras

    from liteship.convert.bit.prune import learned_fake_quant

    rng = np.random.default_rng(0)
    x = tf.constant(np.append(rng.uniform(0.0, 1.0, 999), 200.0).astype(np.float32))  # (1000,)
    weight = tf.constant(np.append(np.ones(999), 1.0 / 200.0 ** 2).astype(np.float32))  # the loss's sensitivity
    log_high = tf.Variable(0.0)
    optimizer = tf_keras.optimizers.Adam(0.1)
    errors = []
    for _ in range(150):
        with tf.GradientTape() as tape:
            quantized = learned_fake_quant(x, 0.0, 200.0 * tf.exp(log_high))
            error = tf.reduce_mean(weight * tf.square(quantized - x))
        errors.append(float(error))
        optimizer.apply_gradients([(tape.gradient(error, log_high), log_high)])
    assert 200.0 * np.exp(float(log_high.numpy())) < 20.0  # the outlier clipped to a tenth or less
    assert errors[-1] < 0.2 * errors[0]


@pytest.fixture(scope="module")
def qat(work):
    return prune(work, "qat-ranges", method="none", sparsity=0.0, qat=True, steps=4)


def test_qat_checkpoint_carries_its_ranges(qat):
    from liteship.convert.bit import weights as W
    from liteship.convert.bit.export import load_checkpoint

    npz, record = qat
    stored = {name for name in np.load(npz) if name.startswith(W.QAT_RANGES_PREFIX)}
    assert {name[len(W.QAT_RANGES_PREFIX):] for name in stored} == qat_sites()
    ranges = load_checkpoint(npz, CONFIG).qat_ranges
    assert set(ranges) == qat_sites() and record["qat_ranges"] == len(ranges)
    assert all(low <= 0.0 <= high and low < high for low, high in ranges.values())
    assert record["params"]["after"] == sum(v.size for n, v in np.load(npz).items() if n not in stored)
    assert 0.0 <= record["quality"]["fake_quantized"] <= 1.0


def test_qat_checkpoint_agrees_with_the_pytorch_reference(qat):
    """The ranges ride along in the .npz without disturbing what the release's names hold."""
    assert_agrees_with_the_pytorch_reference(qat[0])


def test_int8_bundle_takes_its_scales_from_the_qat_ranges(work, qat, tmp_path):
    """Every site's tensor has the (scale, zero point) its range implies. The ranges are halved first, so they
    are ranges calibration cannot produce: a converter that re-calibrated would fail this (checked below on the
    same weights without ranges)."""
    from liteship.convert.bit import weights as W
    from liteship.convert.bit.export import export_bit

    npz, _ = qat
    tensors = dict(np.load(npz))
    weights_only = {n: v for n, v in tensors.items() if not n.startswith(W.QAT_RANGES_PREFIX)}
    halved = {n: (v * 0.5 if n.startswith(W.QAT_RANGES_PREFIX) else v) for n, v in tensors.items()}
    np.savez(tmp_path / "halved.npz", **halved)
    np.savez(tmp_path / "plain.npz", **weights_only)
    found = {}
    for name in ("halved", "plain"):
        bundle = export_bit(tmp_path / f"{name}.npz", tmp_path / name, variant=CONFIG, image_size=SIZE,
                            quant="int8", calibration=work / "digits")
        found[name] = int8_scales(bundle)
    ranges = {n[len(W.QAT_RANGES_PREFIX):]: v for n, v in halved.items() if n.startswith(W.QAT_RANGES_PREFIX)}
    missing = [site for site, (low, high) in ranges.items() if not has_scale(found["halved"], implied(low, high))]
    assert missing == []
    recalibrated = [site for site, (low, high) in ranges.items() if has_scale(found["plain"], implied(low, high))]
    assert len(recalibrated) < len(ranges) / 4  # calibration gives other scales: the check above can fail
    manifest = json.loads((tmp_path / "halved" / "manifest.json").read_text())
    use = manifest["conversion"]["qat_ranges"]
    assert use["used"] is True and use["sites"] == len(ranges) and use["tflite_tensors"] >= len(ranges)
    assert "qat_ranges" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())["conversion"]


def test_int8_bundle_follows_the_fake_quantized_model(work, tmp_path):
    """The QAT model's own outputs (fake-quantized weights and activations) against the int8 bundle made from its
    checkpoint. The bundle also quantizes what QAT keeps in float (GroupNorm's statistics, the input), so they
    agree to int8 noise, not exactly: logits within 10% of the logit scale and the same class."""
    from liteship.convert.bit import weights as W
    from liteship.convert.bit.export import export_bit, load_checkpoint, preprocessing_block
    from liteship.convert.bit.prune import dequantized_float_model, learned_range_values, quantize_aware
    from liteship.convert.bit.train import (
        checkpoint_tensors,
        fine_tune,
        model_from_layers,
        read_image_folder,
        save_npz,
    )
    from tests.convert.test_bit_export import run_tflite

    source = load_checkpoint(work / "source.npz", CONFIG)
    data = read_image_folder(work / "digits", CONFIG.num_classes, preprocessing_block(SIZE, "-1,1"))
    model = model_from_layers(CONFIG, source.layers, SIZE)
    fine_tune(model, data, steps=20, learning_rate=1e-3, batch_size=8, seed=0)  # weights that learned something
    qat_model = quantize_aware(model, data.x_train, learning_rate=1e-4)
    fine_tune(qat_model, data, steps=10, learning_rate=1e-4, batch_size=8, seed=1)
    x = np.concatenate([data.x_test, data.x_train[:6]])
    want = qat_model.predict(x, verbose=0)  # (N, 3)
    tensors = checkpoint_tensors(dequantized_float_model(qat_model, CONFIG, SIZE), CONFIG)
    save_npz(tensors | W.qat_range_arrays(learned_range_values(qat_model)), tmp_path / "qat.npz")
    bundle = export_bit(tmp_path / "qat.npz", tmp_path / "int8", variant=CONFIG, image_size=SIZE, quant="int8",
                        calibration=work / "digits")
    got = run_tflite(bundle, x)
    # measured: 5.3% of the logit scale with the ranges, 14% when the same weights are re-calibrated instead
    np.testing.assert_allclose(got, want, atol=0.1 * np.abs(want).max())
    assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.9


@pytest.mark.parametrize("quant", ["int8x16", "fp32"])
def test_other_modes_record_that_they_leave_the_ranges(work, qat, tmp_path, quant):
    from liteship.convert.bit.export import export_bit

    npz, _ = qat
    bundle = export_bit(npz, tmp_path / quant, variant=CONFIG, image_size=SIZE, quant=quant,
                        calibration=work / "digits" if quant == "int8x16" else None)
    use = json.loads((bundle / "manifest.json").read_text())["conversion"]["qat_ranges"]
    assert use["used"] is False and quant in use["why_not"]


def test_checkpoint_without_ranges_converts_as_before(work, tmp_path):
    """No ranges: the int8 file is byte for byte what converting the Keras model directly gives, and the manifest
    has no qat_ranges."""
    from liteship.convert.bit.export import (
        build_keras,
        calibration_dataset,
        checkpoint_to_tflite,
        export_bit,
        keras_to_tflite,
        load_checkpoint,
        preprocessing_block,
    )
    from liteship.convert.quant import Quant

    checkpoint = load_checkpoint(work / "source.npz", CONFIG)
    assert checkpoint.qat_ranges == {}
    rep = lambda: calibration_dataset(work / "digits", preprocessing_block(SIZE, "-1,1"))  # noqa: E731
    ours, report = checkpoint_to_tflite(checkpoint, Quant.INT8, image_size=SIZE, representative_dataset=rep())
    direct, _ = keras_to_tflite(build_keras(checkpoint, image_size=SIZE), Quant.INT8, representative_dataset=rep())
    assert ours == direct and "qat_ranges" not in report
    bundle = export_bit(work / "source.npz", tmp_path / "int8", variant=CONFIG, image_size=SIZE, quant="int8",
                        calibration=work / "digits")
    assert "qat_ranges" not in json.loads((bundle / "manifest.json").read_text())["conversion"]


def test_a_bad_qat_range_is_one_line_naming_it(tmp_path):
    from liteship.convert.bit import weights as W
    from liteship.convert.bit.export import load_checkpoint

    write_bit_npz(tmp_path / "bad.npz", CONFIG, extra={W.QAT_RANGES_PREFIX + "group_norm__relu": np.array(
        [0.5, 2.0], np.float32)})
    with pytest.raises(ConvertError, match=r"'liteship_qat_ranges/group_norm__relu' is not a quantization range"):
        load_checkpoint(tmp_path / "bad.npz", CONFIG)


def test_wrong_class_count_fails_before_training(work, tmp_path, monkeypatch):
    from liteship.convert.bit import train

    monkeypatch.setattr(train, "fine_tune", lambda *a, **k: pytest.fail("trained on data that does not fit"))
    write_digit_folder(tmp_path / "four", classes=4, per_class=3)
    with pytest.raises(ConvertError, match="4 class folders but the checkpoint's head has 3 classes"):
        from liteship.convert.bit.prune import prune_bit

        prune_bit(work / "source.npz", tmp_path / "out.npz", tmp_path / "four", P.PruneOptions(steps=2),
                  variant=CONFIG, image_size=SIZE)
    assert not (tmp_path / "out.npz").exists()


def test_a_file_that_is_not_an_image_is_named(work, tmp_path):
    from liteship.convert.bit.prune import prune_bit

    write_digit_folder(tmp_path / "d", per_class=3)
    (tmp_path / "d" / "c1" / "notes.txt").write_text("not a picture")
    with pytest.raises(ConvertError, match="notes.txt is not an image"):
        prune_bit(work / "source.npz", tmp_path / "out.npz", tmp_path / "d", P.PruneOptions(steps=2),
                  variant=CONFIG, image_size=SIZE)


def test_an_interrupted_run_writes_nothing_and_keeps_the_old_output(work, tmp_path, monkeypatch):
    from liteship.convert.bit import train
    from liteship.convert.bit.prune import prune_bit

    out = tmp_path / "pruned.npz"
    out.write_bytes(b"old")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_npz", interrupted)  # the last step before the rename
    with pytest.raises(KeyboardInterrupt):
        prune_bit(work / "source.npz", out, work / "digits", P.PruneOptions(method="structured", steps=0),
                  variant=CONFIG, image_size=SIZE, convert=False)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned.npz"]


def _prune_bit_cli(work, out, capsys, *args) -> tuple[int, list[str]]:
    """`liteship prune bit` on the tiny source in-process: its exit code and stderr lines."""
    from liteship.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "bit", str(work / "source.npz"), "--variant", "tiny", "--out", str(out), *args])
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def test_cli_reports_bad_data_in_one_line(work, tmp_path, capsys):
    code, err = _prune_bit_cli(work, tmp_path / "o.npz", capsys, "--data", str(tmp_path / "missing"),
                               "--method", "structured", "--image-size", "32")
    assert code == 1
    assert err[-1].startswith("error: --data") and "not a folder" in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_cli_allocation_needs_structured_in_one_line(work, tmp_path, capsys):
    code, err = _prune_bit_cli(work, tmp_path / "o.npz", capsys, "--data", str(work / "digits"),
                               "--method", "magnitude", "--allocation", "global")
    assert code == 1
    assert err[-1] == "error: --allocation global picks channels to remove; use it with --method structured"
    assert not (tmp_path / "o.npz").exists()
