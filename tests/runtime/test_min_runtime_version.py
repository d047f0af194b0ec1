"""A model's required runtime version, read from the file, and the one-line refusal when the runtime is older
(tflite-runtime 2.14 cannot load bundles whose ops need 2.17). The board test
(tests/device/test_board.py) checks the same against a real tflite-runtime 2.14 on aarch64."""

from __future__ import annotations

import importlib.util
import re
import shutil

import pytest

from liteship.convert.tflite_metadata import embed_metadata
from liteship.errors import RuntimeLiteshipError
from liteship.runtime.interpreter import create_interpreter, runtime_too_old
from liteship.runtime.tflite_file import MIN_RUNTIME_METADATA_NAME, read_model


def test_the_converter_records_a_version_and_we_read_it(fixture_bundles):
    for mode in ("fp32", "int8"):
        version = read_model(fixture_bundles / f"classifier-{mode}" / "model.tflite").min_runtime_version()
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), version  # the converter pads it with NULs to 16 bytes


@pytest.mark.parametrize("needed, backend, have, refused", [
    ("2.17.0", "tflite-runtime", "2.14.0", True),
    ("2.17.0", "tflite-runtime", "2.17.0", False),
    ("2.14.1", "tflite-runtime", "2.14.0", True),
    ("1.14.0", "tflite-runtime", "2.14.0", False),
    ("2.17.0", "tflite-runtime", "2.14.0rc1", True),
    ("2.17.0", "tf", "2.10.1", True),
    ("2.22.0", "tf", "2.21.0", True),
    ("2.17.0", "litert", "1.4.0", False),  # LiteRT numbers its releases its own way: not comparable
    (None, "tflite-runtime", "2.14.0", False),  # a file without the record
    ("2.17.0", "tflite-runtime", "unknown", False),
])
def test_runtime_too_old(needed, backend, have, refused):
    line = runtime_too_old(needed, backend, have)
    assert (line is not None) == refused
    if refused:
        assert line.startswith(f"needs TFLite runtime {needed} or newer") and f"{backend} {have}" in line
        assert "\n" not in line


def test_the_runtime_refuses_a_model_newer_than_itself(fixture_bundles, tmp_path):
    """A model claiming a runtime from the future is refused in one line by any TensorFlow-numbered backend here
    (tflite-runtime in the device-like venv, tf.lite on the full install), before TFLite tries to load it."""
    backend = next((b for b, module in (("tflite-runtime", "tflite_runtime"), ("tf", "tensorflow"))
                    if importlib.util.find_spec(module)), None)
    if backend is None:
        pytest.skip("no TensorFlow-numbered interpreter (tflite-runtime or tensorflow) installed here")
    model = tmp_path / "model.tflite"
    shutil.copy(fixture_bundles / "classifier-fp32" / "model.tflite", model)
    create_interpreter(model, backend=backend)  # loads as converted
    embed_metadata(model, model, {MIN_RUNTIME_METADATA_NAME: b"9.0.0".ljust(16, b"\0")})
    assert read_model(model).min_runtime_version() == "9.0.0"
    with pytest.raises(RuntimeLiteshipError) as err:
        create_interpreter(model, backend=backend)
    assert str(err.value).startswith(f"{model}: needs TFLite runtime 9.0.0 or newer (the file's min_runtime_version)")


def test_the_2_14_conversion_loads_and_answers_here_where_the_default_one_is_refused(fixture_bundles):
    """`convert --min-runtime 2.14` (dynamic-int8, dense layers per tensor) loads on every backend, tflite-runtime
    2.14 included (the device-like run), and answers like the source model; the default dynamic-int8 bundle needs
    2.17 and tflite-runtime 2.14 refuses it in one line."""
    import numpy as np

    from liteship.runtime.interpreter import version_tuple

    old = fixture_bundles / "dense-dynamic-int8-rt2.14"
    assert version_tuple(read_model(old / "model.tflite").min_runtime_version()) <= (2, 14, 0)
    ref = np.load(fixture_bundles / "dense-dynamic-int8-rt2.14.reference.npz")
    interpreter = create_interpreter(old / "model.tflite")
    runner = interpreter.get_signature_runner()
    (name,) = runner.get_input_details()
    got = np.concatenate([next(iter(runner(**{name: x[None]}).values())) for x in ref["x"]])
    assert np.abs(got - ref["y"]).max() <= 0.05  # tests/convert/test_generic_convert.py's dynamic-int8 bound

    backend, _, version = interpreter.liteship_backend.partition(" ")  # e.g. "tflite-runtime 2.14.0"
    if backend == "tflite-runtime" and version_tuple(version) < (2, 17, 0):
        with pytest.raises(RuntimeLiteshipError, match="needs TFLite runtime 2.17.0 or newer"):
            create_interpreter(fixture_bundles / "dense-dynamic-int8" / "model.tflite")


def test_versions_compare_with_or_without_a_patch_number():
    """Regression: --min-runtime 2.17 refused a file that needs 2.17.0, because (2, 17) < (2, 17, 0)."""
    from liteship.runtime.interpreter import version_tuple

    assert version_tuple("2.17") == version_tuple("2.17.0") == (2, 17, 0)
    assert version_tuple("2.14.0rc1") == (2, 14, 0) and version_tuple("unknown") == ()
    assert runtime_too_old("2.17.0", "tflite-runtime", "2.17") is None
