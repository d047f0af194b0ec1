"""The pruning options and the schedule every family shares (convert/prune.py); no training here."""

from __future__ import annotations

import numpy as np
import pytest

from liteship.convert import prune as P
from liteship.errors import ConvertError


@pytest.mark.parametrize("text, want", [("2:4", (2, 4)), (" 1 : 8 ", (1, 8)), (None, None)])
def test_m_by_n_parses(text, want):
    assert P.parse_m_by_n(text) == want


@pytest.mark.parametrize("text", ["4:2", "2-4", "0:4", "2:2", "x"])
def test_bad_m_by_n_is_a_one_line_error(text):
    with pytest.raises(ConvertError, match="M:N"):
        P.parse_m_by_n(text)


@pytest.mark.parametrize("options, message", [
    (dict(method="pyramid"), "unknown --method"),
    (dict(sparsity=1.0), "below 1"),
    (dict(method="structured", m_by_n=(2, 4)), "magnitude-pruning pattern"),
    (dict(method="magnitude", steps=1), "--steps 2 or more"),
    (dict(learning_rate=0), "must be positive"),
    (dict(method="magnitude", qat=True), "does not keep magnitude pruning's zeros"),
    (dict(method="structured", allocation="random"), "unknown --allocation"),
    (dict(method="magnitude", allocation="global"), "use it with --method structured"),
])
def test_options_are_checked_before_any_work(options, message):
    with pytest.raises(ConvertError, match=message):
        P.PruneOptions(**options)


@pytest.mark.parametrize("steps", [2, 5, 100, 1000])
def test_schedule_reaches_the_target_on_a_mask_update_before_the_last_step(steps):
    pytest.importorskip("tensorflow_model_optimization")
    schedule = P.pruning_params(P.PruneOptions(method="magnitude", sparsity=0.5, steps=steps))["pruning_schedule"]
    config = schedule.get_config()["config"]
    end, frequency = config["end_step"], config["frequency"]
    assert end < steps and end % frequency == 0  # the final update happens, and fine-tuning continues after it
    update, sparsity = schedule(end)
    assert bool(update) and float(sparsity) == pytest.approx(0.5)


def test_staged_file_output_is_renamed_with_its_record(tmp_path):
    source = tmp_path / "source.npz"
    source.write_bytes(b"src")
    out = tmp_path / "out.npz"
    with P.staged_output(out, source, folder=False) as staged:
        staged.write_bytes(b"new")
        P.sidecar_path(staged).write_text("{}")
        assert not out.exists()
    assert out.read_bytes() == b"new" and P.sidecar_path(out).read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz", "out.npz.pruning.json", "source.npz"]


def test_staged_output_refuses_the_source_and_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(ConvertError, match="is the source itself"):
        with P.staged_output(tmp_path / "mine", tmp_path / "mine", folder=True):
            pass
    with pytest.raises(ConvertError, match="not a liteship prune output"):
        with P.staged_output(tmp_path / "mine", tmp_path / "src", folder=True):
            pass
    assert (tmp_path / "mine" / "photo.jpg").read_bytes() == b"x"


@pytest.mark.parametrize("data, bits", [(bytes(range(256)), 8.0), (b"\0" * 10, 0.0), (b"ab" * 5, 1.0),
                                        (b"aabc" * 4, 1.5)])
def test_byte_entropy(data, bits):
    assert P.byte_entropy(data) == pytest.approx(bits)


def test_int8_weight_entropy_reads_the_weights_of_an_int8_tflite():
    """A two-layer int8 model, its first kernel half zeros: the measurement finds both kernels (and nothing
    else) in the file, the zeros, the dense tensor, and the order-0 identity H = h(p) + (1 - p) H(non-zero)."""
    pytest.importorskip("tensorflow")
    import tensorflow as tf
    import tf_keras

    from liteship.convert.quant import apply_recipe

    rng = np.random.default_rng(0)
    model = tf_keras.Sequential([tf_keras.Input((48,)), tf_keras.layers.Dense(64, name="sparse"),
                                 tf_keras.layers.Dense(32, name="dense")])
    kernel = rng.normal(size=(48, 64)).astype(np.float32)
    kernel += np.sign(kernel) * 0.5  # no weight near 0, so none rounds to an int8 zero by accident
    kernel[:, ::2] = 0.0  # half of every row: every output channel half zeros
    model.get_layer("sparse").kernel.assign(kernel)
    # the dense kernel too: Keras' unseeded initializer put a few weights within half an int8 step of 0, which
    # rounded to zeros and moved the measured zero fraction past the tolerance on some runs
    dense = rng.normal(size=(64, 32)).astype(np.float32)
    model.get_layer("dense").kernel.assign(dense + np.sign(dense) * 0.5)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    apply_recipe(converter, "int8", representative_dataset=lambda: (
        [rng.normal(size=(1, 48)).astype(np.float32)] for _ in range(8)))
    tflite = converter.convert()

    stats = P.int8_weight_entropy(tflite)
    assert stats["weight_bytes"] == 48 * 64 + 64 * 32  # the kernels; biases are int32
    assert stats["zero_fraction"] == pytest.approx(48 * 32 / (48 * 64 + 64 * 32), abs=2e-3)
    (dense_name, dense_bytes), = stats["dense_tensors"].items()
    assert "dense" in dense_name and dense_bytes == stats["dense_bytes"] == 64 * 32
    p = stats["zero_fraction"]
    mask = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    assert stats["entropy_bits"] == pytest.approx(mask + (1 - p) * stats["nonzero_entropy_bits"], rel=1e-9)
    assert stats["rest_gzip_bytes"] < len(tflite) - stats["weight_bytes"]
    assert stats["bound_bytes"] < len(tflite)


def test_gzip_huffman_only_is_a_gzip_file_and_codes_sparse_bytes_near_their_entropy():
    import gzip

    rng = np.random.default_rng(0)
    values = np.clip(np.round(rng.normal(scale=30, size=200_000)), -127, 127).astype(np.int8)
    values[rng.random(values.size) < 0.5] = 0  # half zeros, scattered: short runs
    data = values.tobytes()
    packed = P.gzip_huffman_only(data)
    assert gzip.decompress(packed) == data
    entropy_bytes = len(data) * P.byte_entropy(data) / 8
    assert len(packed) < 1.02 * entropy_bytes  # within 2% of the order-0 bound
    assert len(packed) < len(gzip.compress(data, compresslevel=9))  # where gzip's default strategy loses
