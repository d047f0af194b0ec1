"""SavedModel / Keras -> bundle in every mode: outputs against the source model, and bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import needs_tensorflow

pytestmark = needs_tensorflow

# Max |tflite - keras| on logits of magnitude ~0.1-1, per mode. fp32 differs only by kernel order (1e-5);
# fp16 rounds weights to 11 significant bits (~5e-4 relative, a few 1e-3 through 3 layers); dynamic-int8 and
# int8 use 8-bit weights (and for int8 8-bit activations): one step of a per-tensor scale over 3 layers is
# ~1-3% of the range, so 0.05 absolute on these logits; int16 activations bring int8x16 close to dynamic-int8.
TOLERANCE = {"fp32": 1e-5, "fp16": 5e-3, "dynamic-int8": 0.05, "int8": 0.08, "int8x16": 0.05}


@pytest.mark.parametrize("mode", list(TOLERANCE))
def test_every_mode_matches_the_source_model(fixture_bundles, mode):
    from liteship.runtime.bundle import Bundle
    from liteship.runtime.interpreter import create_interpreter

    bundle = Bundle.open(fixture_bundles / f"classifier-{mode}")
    ref = np.load(fixture_bundles / f"classifier-{mode}.reference.npz")
    runner = create_interpreter(bundle.model_path).get_signature_runner()
    (name,) = runner.get_input_details()
    got = np.concatenate([next(iter(runner(**{name: x[None]}).values())) for x in ref["x"]])
    err = np.abs(got - ref["y"]).max()
    assert err <= TOLERANCE[mode], f"{mode}: max abs error {err:.2e} > {TOLERANCE[mode]}"
    assert (got.argmax(-1) == ref["y"].argmax(-1)).mean() >= (1.0 if mode in ("fp32", "fp16") else 0.8)


def test_quantized_files_are_smaller(fixture_bundles):
    size = {m: (fixture_bundles / f"classifier-{m}" / "model.tflite").stat().st_size for m in TOLERANCE}
    assert size["fp16"] < size["fp32"]
    assert size["int8"] < size["fp16"]


def test_int8_model_has_integer_kernels(fixture_bundles):
    from liteship.runtime.tflite_file import read_model

    info = read_model(fixture_bundles / "classifier-int8" / "model.tflite")
    conv_inputs = [info.subgraphs[0].tensors[t].dtype for t in range(len(info.subgraphs[0].tensors))
                   if "conv" in info.subgraphs[0].tensors[t].name.lower()]
    assert "int8" in conv_inputs


def test_manifest_records_provenance(fixture_bundles):
    manifest = json.loads((fixture_bundles / "classifier-int8" / "manifest.json").read_text())
    assert manifest["schema"] == "liteship.bundle/1"
    assert manifest["quantization"] == "int8"
    assert manifest["conversion"]["op_counts"]["CONV_2D"] == 2
    assert manifest["versions"]["tensorflow"].startswith("2.")
    assert set(manifest["files"]) == {"model.tflite", "assets/labels.txt"}


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    import keras

    d = tmp_path_factory.mktemp("keras")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(3)])
    model.save(d / "m.keras")
    np.save(d / "calib.npy", np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32))
    np.save(d / "wrong.npy", np.zeros((8, 7), np.float32))
    return d / "m.keras"


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "liteship.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def assert_one_line_error(proc, pattern):
    import re

    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), proc.stderr
    assert "Traceback" not in proc.stderr


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name or p.name.startswith(".") or
                  p.name.startswith("out"))


def test_cli_converts_keras_with_calibration(keras_file, tmp_path):
    out = tmp_path / "out-int8"
    proc = run_cli("convert", "keras", keras_file, "--quant", "int8", "--calibration",
                   keras_file.parent / "calib.npy", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "calibrating on 32 samples" in proc.stderr
    from liteship.runtime.bundle import Bundle

    assert Bundle.open(out).quantization == "int8"


def test_integer_io_for_edge_tpu(keras_file, tmp_path):
    """--io-type uint8 makes the model's input and output uint8, with their scales in the manifest."""
    from liteship.runtime.bundle import Bundle
    from liteship.runtime.interpreter import create_interpreter

    out = tmp_path / "out-uint8"
    proc = run_cli("convert", "keras", keras_file, "--quant", "int8", "--io-type", "uint8", "--calibration",
                   keras_file.parent / "calib.npy", "--out", out)
    assert proc.returncode == 0, proc.stderr
    bundle = Bundle.open(out)
    (spec,) = bundle.signatures["serving_default"]["inputs"]
    assert bundle.manifest["io_type"] == "uint8" and spec["dtype"] == "uint8" and spec["quantization"]["scale"] > 0
    runner = create_interpreter(bundle.model_path).get_signature_runner()
    (name, detail), = runner.get_input_details().items()
    assert detail["dtype"] == np.uint8
    (result,) = runner(**{name: np.full((1, 6), spec["quantization"]["zero_point"], np.uint8)}).values()
    assert result.dtype == np.uint8
    bad = run_cli("convert", "keras", keras_file, "--quant", "fp16", "--io-type", "uint8", "--out", tmp_path / "x")
    assert_one_line_error(bad, r"--io-type uint8 needs a calibrated mode")


def test_missing_path(tmp_path):
    proc = run_cli("convert", "savedmodel", tmp_path / "nope", "--out", tmp_path / "out")
    assert_one_line_error(proc, r"nope does not exist")
    assert leftovers(tmp_path) == []


def test_corrupt_saved_model(tmp_path):
    sm = tmp_path / "sm"
    sm.mkdir()
    (sm / "saved_model.pb").write_bytes(b"\x08\x01garbage that is not a protobuf" * 5)
    proc = run_cli("convert", "savedmodel", sm, "--out", tmp_path / "out")
    assert_one_line_error(proc, r"sm: cannot load the SavedModel")
    assert leftovers(tmp_path) == []


def test_folder_that_is_not_a_saved_model(tmp_path):
    proc = run_cli("convert", "savedmodel", tmp_path, "--out", tmp_path / "out")
    assert_one_line_error(proc, r"is not a SavedModel folder")


def test_calibration_of_the_wrong_shape(keras_file, tmp_path):
    proc = run_cli("convert", "keras", keras_file, "--quant", "int8", "--calibration",
                   keras_file.parent / "wrong.npy", "--out", tmp_path / "out")
    assert_one_line_error(proc, r"wrong.npy has shape \(8, 7\); the model input expects \?x6")
    assert leftovers(tmp_path) == []


def test_int8_without_calibration_never_uses_random_data(keras_file, tmp_path):
    proc = run_cli("convert", "keras", keras_file, "--quant", "int8", "--out", tmp_path / "out")
    assert_one_line_error(proc, r"needs --calibration")
    assert leftovers(tmp_path) == []


def test_unknown_mode(keras_file, tmp_path):
    proc = run_cli("convert", "keras", keras_file, "--quant", "int4", "--out", tmp_path / "out")
    assert proc.returncode == 2 and "int4" in proc.stderr and "Traceback" not in proc.stderr
    from liteship.convert.quant import Quant
    from liteship.errors import ConvertError

    with pytest.raises(ConvertError, match="unknown quantization mode 'int3'; choose one of: fp32, fp16"):
        Quant.parse("int3")  # int4 became a (GPT-2) mode


def test_failed_conversion_keeps_the_old_bundle(keras_file, tmp_path):
    """A conversion that fails after an earlier success leaves the earlier bundle intact and no temp folder."""
    out = tmp_path / "out"
    assert run_cli("convert", "keras", keras_file, "--out", out).returncode == 0
    before = (out / "manifest.json").read_text()
    proc = run_cli("convert", "keras", keras_file, "--quant", "int8", "--calibration",
                   keras_file.parent / "wrong.npy", "--out", out)
    assert proc.returncode == 1
    assert (out / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_unsupported_op_is_named_and_flex_is_opt_in(tmp_path):
    import tensorflow as tf

    class Odd(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([4], tf.float32)])
        def __call__(self, x):  # MatrixDeterminant: no TFLite builtin, but in the Flex allowlist
            return tf.linalg.det(tf.reshape(x, [2, 2]))

    sm = tmp_path / "odd"
    tf.saved_model.save(Odd(), str(sm), signatures=Odd().__call__.get_concrete_function())
    proc = run_cli("convert", "savedmodel", sm, "--out", tmp_path / "odd-fp32")
    assert_one_line_error(proc, r"ops with no TFLite builtin: tf\.MatrixDeterminant.*--allow-tf-ops")
    proc = run_cli("convert", "savedmodel", sm, "--allow-tf-ops", "--out", tmp_path / "odd-flex")
    assert proc.returncode == 0, proc.stderr
    assert "Flex delegate" in proc.stderr
    manifest = json.loads((tmp_path / "odd-flex" / "manifest.json").read_text())
    assert manifest["conversion"]["flex_ops"] == ["FlexMatrixDeterminant"]


def test_op_outside_even_flex_says_so(tmp_path):
    import tensorflow as tf

    class Odder(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([4], tf.float32)])
        def __call__(self, x):  # Erfinv is neither a builtin nor in the Flex allowlist
            return tf.math.erfinv(tf.clip_by_value(x, -0.5, 0.5))

    sm = tmp_path / "odder"
    tf.saved_model.save(Odder(), str(sm), signatures=Odder().__call__.get_concrete_function())
    proc = run_cli("convert", "savedmodel", sm, "--allow-tf-ops", "--out", tmp_path / "x")
    assert_one_line_error(proc, r"ops TFLite cannot run, even as Flex ops: tf\.Erfinv")


def test_lean_converter_memory_gives_the_same_bytes_and_restores_tensorflow(tmp_path, monkeypatch):
    """convert_saved_model swaps in a leaner re-serialization for TFLiteConverter's post-processing (GPT-2 124M fp32
    peaked at 4.06 GB with TensorFlow's own, 3.49 GB with it); the lean path must have run (TensorFlow swallows an
    exception in its de-duplication pass and skips it), the file must come out byte for byte the same, and
    TensorFlow's functions must be back afterwards, also after a failed conversion."""
    import contextlib

    import tensorflow as tf
    from tensorflow.lite.python import lite
    from tensorflow.lite.tools import flatbuffer_utils

    from liteship.convert import tflite as convert_tflite
    from liteship.convert.tflite import TFLITE_FILE_IDENTIFIER, convert_saved_model, lean_converter_memory

    runs = []

    @contextlib.contextmanager
    def recorded():
        with lean_converter_memory() as run:
            runs.append(run)
            yield run

    monkeypatch.setattr(convert_tflite, "lean_converter_memory", recorded)

    class Two(tf.Module):  # two signatures sharing a weight: the de-duplication pass has work to do
        def __init__(self):
            self.w = tf.Variable(np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, 64], tf.float32)])
        def a(self, x):
            return {"y": tf.matmul(x, self.w)}

        @tf.function(input_signature=[tf.TensorSpec([2, 64], tf.float32)])
        def b(self, x):
            return {"y": tf.nn.relu(tf.matmul(x, self.w))}

    m = Two()
    tf.saved_model.save(m, str(tmp_path / "sm"), signatures={"a": m.a.get_concrete_function(),
                                                              "b": m.b.get_concrete_function()})
    originals = (lite._deduplicate_readonly_buffers, flatbuffer_utils.convert_object_to_bytearray)
    lean, _ = convert_saved_model(tmp_path / "sm", "fp32", signature_keys=["a", "b"])
    # one heap trim before de-duplication; two models written by the lean serializer: de-duplication's and metadata's
    assert [(run.trims, run.serialized) for run in runs] == [(1, 2)]
    assert lean[4:8] == TFLITE_FILE_IDENTIFIER
    assert (lite._deduplicate_readonly_buffers, flatbuffer_utils.convert_object_to_bytearray) == originals
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"), signature_keys=["a", "b"])
    assert lean == converter.convert()  # TensorFlow's own path, unpatched
    assert lean.count(np.ascontiguousarray(m.w.numpy().T).tobytes()) == 1  # stored once, as FULLY_CONNECTED's [out, in]

    with pytest.raises(RuntimeError), lean_converter_memory():
        assert flatbuffer_utils.convert_object_to_bytearray is not originals[1]
        raise RuntimeError("conversion failed")
    assert (lite._deduplicate_readonly_buffers, flatbuffer_utils.convert_object_to_bytearray) == originals
