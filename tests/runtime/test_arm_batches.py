"""tflite-runtime on ARM crashes (SIGSEGV) on a full-integer FULLY_CONNECTED resized to a batch of 2 or more,
measured under qemu on aarch64 and armv7l boards: the runtime runs such a model one row at a
time there, and only there. On the emulated armv7l board this whole file, and tests/device/test_board.py's batch
test, run on the real tflite-runtime 2.14 where the crash happens."""

from __future__ import annotations

import numpy as np
import pytest

from liteship.runtime.interpreter import batch_crashes
from liteship.runtime.tflite_file import read_model


@pytest.mark.parametrize("bundle, backend, machine, crashes", [
    ("classifier-int8", "tflite-runtime 2.14.0", "armv7l", True),
    ("classifier-int8", "tflite-runtime 2.14.0", "aarch64", True),
    ("classifier-int8", "tflite-runtime 2.14.0", "x86_64", False),
    ("classifier-int8", "litert 2.3.0", "aarch64", False),
    ("classifier-fp32", "tflite-runtime 2.14.0", "armv7l", False),
    ("dense-dynamic-int8-rt2.14", "tflite-runtime 2.14.0", "armv7l", False),  # float input, int8 weights: fine
])
def test_which_models_would_crash_in_batches(fixture_bundles, bundle, backend, machine, crashes):
    assert batch_crashes(backend, machine, read_model(fixture_bundles / bundle / "model.tflite")) is crashes


def test_an_int8_classifier_runs_one_row_at_a_time_where_batches_crash(fixture_bundles, monkeypatch):
    from liteship.runtime import interpreter as interpreter_module
    from liteship.runtime.classify import ImageClassifier

    bundle = fixture_bundles / "classifier-int8"
    x = np.load(fixture_bundles / "classifier-int8.reference.npz")["x"][:4]
    here = ImageClassifier(bundle)
    want = here.outputs(x)  # where batches crash (the armv7l board), this already runs row by row
    if not interpreter_module.one_row_at_a_time(here.interpreter, here.bundle.model_path):
        assert here.interpreter.get_input_details()[0]["shape"][0] == 4  # batched, as everywhere else

    create = interpreter_module.create_interpreter

    def as_tflite_runtime(*args, **kwargs):
        interpreter = create(*args, **kwargs)
        interpreter.liteship_backend = "tflite-runtime 2.14.0"
        return interpreter

    monkeypatch.setattr(interpreter_module, "create_interpreter", as_tflite_runtime)
    monkeypatch.setattr(interpreter_module.platform, "machine", lambda: "armv7l")
    arm = ImageClassifier(bundle)
    got = arm.outputs(x)
    assert arm.interpreter.get_input_details()[0]["shape"][0] == 1
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert len(list(arm.iter_classify(list(x), top_k=2))) == 4
