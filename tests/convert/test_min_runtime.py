"""`convert --min-runtime 2.14`: bundles the last tflite-runtime (2.14, all 32-bit ARM boards have) loads, or one
line saying why not. The runtime side (loading them on tflite-runtime 2.14 and comparing answers)
is tests/runtime/test_min_runtime_version.py in the device-like venv, and tests/device/test_board.py on the
emulated armv7l board."""

from __future__ import annotations

import json

import numpy as np
import pytest

from liteship.errors import ConvertError
from liteship.runtime.interpreter import version_tuple
from liteship.runtime.tflite_file import read_model
from tests.conftest import needs_tensorflow
from tests.convert import test_generic_convert
from tests.convert.test_generic_convert import TOLERANCE, assert_one_line_error, leftovers, run_cli

pytestmark = needs_tensorflow
keras_file = test_generic_convert.keras_file  # the fixture, shared with the generic conversion tests


def op_versions(model_path) -> dict[str, int]:
    info = read_model(model_path)
    return dict(zip(info.operator_names, info.operator_versions))


def test_dynamic_int8_for_2_14_keeps_dense_layers_per_tensor(fixture_bundles):
    """TensorFlow's converter quantizes dense layers per channel (FULLY_CONNECTED v12, TFLite 2.17); for 2.14 the
    per-tensor hybrid kernel (v9) does, and the file says so."""
    default = fixture_bundles / "dense-dynamic-int8" / "model.tflite"
    old = fixture_bundles / "dense-dynamic-int8-rt2.14" / "model.tflite"
    assert op_versions(default)["FULLY_CONNECTED"] == 12
    assert version_tuple(read_model(default).min_runtime_version()) >= (2, 17, 0)
    assert op_versions(old)["FULLY_CONNECTED"] < 12
    assert version_tuple(read_model(old).min_runtime_version()) <= (2, 14, 0)
    fc_weights = [t for t in read_model(old).subgraphs[0].tensors if t.dtype == "int8"]
    assert fc_weights and all(len(t.scale) == 1 for t in fc_weights)  # one scale per weight matrix
    manifest = json.loads((old.parent / "manifest.json").read_text())
    assert manifest["quantization"] == "dynamic-int8"
    assert manifest["conversion"]["runtime"] == {"target": "2.14",
                                                 "min_runtime_version": read_model(old).min_runtime_version()}
    default_manifest = json.loads((default.parent / "manifest.json").read_text())
    assert default_manifest["conversion"]["runtime"]["target"] is None


def test_the_2_14_recipe_matches_the_source_model(fixture_bundles):
    from liteship.runtime.interpreter import create_interpreter

    ref = np.load(fixture_bundles / "dense-dynamic-int8-rt2.14.reference.npz")
    runner = create_interpreter(fixture_bundles / "dense-dynamic-int8-rt2.14" / "model.tflite") \
        .get_signature_runner()
    (name,) = runner.get_input_details()
    got = np.concatenate([next(iter(runner(**{name: x[None]}).values())) for x in ref["x"]])
    assert np.abs(got - ref["y"]).max() <= TOLERANCE["dynamic-int8"]
    assert (got.argmax(-1) == ref["y"].argmax(-1)).mean() >= 0.8


def test_a_mode_that_cannot_meet_the_target_is_refused_in_one_line(keras_file, tmp_path):
    """Full-integer int8 FULLY_CONNECTED is version 4 (TFLite 1.14): asked for 1.13 it is refused after
    conversion, naming what it needs, and nothing is written."""
    out = tmp_path / "out-int8"
    proc = run_cli("convert", "keras", keras_file, "--quant", "int8", "--calibration",
                   keras_file.parent / "calib.npy", "--min-runtime", "1.13", "--out", out)
    assert_one_line_error(proc, r"--min-runtime 1\.13: the converted model needs TFLite runtime 1\.14\.0 "
                                r"\(newest op versions: .* v\d+.*\); try --quant fp16 or fp32")
    assert not out.exists() and leftovers(tmp_path) == []
    ok = run_cli("convert", "keras", keras_file, "--quant", "dynamic-int8", "--min-runtime", "2.14", "--out", out)
    assert ok.returncode == 0, ok.stderr
    assert version_tuple(read_model(out / "model.tflite").min_runtime_version()) <= (2, 14, 0)


def test_bad_versions_and_int4_are_refused_before_any_work(tmp_path):
    bad = run_cli("convert", "gpt2", tmp_path, "--min-runtime", "2.x")
    assert bad.returncode == 2 and "'2.x' is not a TFLite runtime version such as 2.14" in bad.stderr
    int4 = run_cli("convert", "gpt2", tmp_path / "no-such-checkpoint", "--quant", "int4", "--min-runtime", "2.14")
    assert_one_line_error(int4, r"--min-runtime 2\.14: --quant int4 cannot promise a runtime")


def test_gpt2_for_2_14(tmp_path_factory):
    """GPT-2 in dynamic-int8 for 2.14: the file needs at most 2.14, its token table is still the LM head's
    weight, and its logits are PyTorch's within stated bounds. One scale per weight matrix rounds coarser than one
    per output channel: against PyTorch, measured max 20% of the largest logit (at one position), rms 8.3% of the
    logits' std, top-1 agreement 90% (the default per-channel bundle: 15%, 4.8%, 97%, test_gpt2_export.py).
    Bounds: the max at 1.7x observed as there, rms at 1.2x, top-1 at 80%; a broken cache or table moves ~100%."""
    pytest.importorskip("torch")
    from liteship.convert.gpt2.export import export
    from tests.convert.test_gpt2_export import reference, run_sequence
    from tests.gpt2_fixtures import BUNDLE_OPTIONS, gpt2_bundles

    root = gpt2_bundles(tmp_path_factory, quants=("dynamic-int8",))
    bundle = export(root / "gpt2-checkpoint", root / "gpt2-dynamic-int8-rt2.14", quant="dynamic-int8",
                    min_runtime="2.14", **BUNDLE_OPTIONS).bundle
    assert op_versions(bundle / "model.tflite")["FULLY_CONNECTED"] < 12
    assert version_tuple(read_model(bundle / "model.tflite").min_runtime_version()) <= (2, 14, 0)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["conversion"]["runtime"]["target"] == "2.14" and manifest["config"]["token_table"] == "lm_head"
    seq, n_prompt, want, _ = reference(root)
    got = run_sequence(bundle, seq, n_prompt)
    diff = np.abs(got - want)
    assert diff.max() <= 0.35 * np.abs(want).max()
    assert np.sqrt((diff ** 2).mean()) <= 0.10 * want.std()
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.8


def test_the_check_itself_names_what_is_too_new():
    from liteship.convert.tflite import check_runtime_target

    class Model:
        def min_runtime_version(self):
            return "2.17.0"

        def newest_op_versions(self):
            return [("FULLY_CONNECTED", 12)]

    check_runtime_target(Model(), None, "m")
    check_runtime_target(Model(), "2.17", "m")
    with pytest.raises(ConvertError, match=r"^m: --min-runtime 2\.14: the converted model needs TFLite runtime "
                                           r"2\.17\.0 \(newest op versions: FULLY_CONNECTED v12\)"):
        check_runtime_target(Model(), "2.14", "m")
