"""The interpreter layer and the local benchmark."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from liteship.errors import LiteshipError, RuntimeLiteshipError
from liteship.runtime.bench import SCHEMA, benchmark, percentiles
from liteship.runtime.interpreter import available_backends, create_interpreter


def test_auto_picks_an_installed_backend(fixture_bundles):
    interp = create_interpreter(fixture_bundles / "classifier-fp32" / "model.tflite", num_threads=1)
    assert interp.liteship_backend.split()[0] == available_backends()[0]


def test_unknown_backend_and_bad_threads(fixture_bundles):
    model = fixture_bundles / "classifier-fp32" / "model.tflite"
    with pytest.raises(RuntimeLiteshipError, match="unknown interpreter backend 'onnx'"):
        create_interpreter(model, backend="onnx")
    with pytest.raises(RuntimeLiteshipError, match="--threads must be at least 1"):
        create_interpreter(model, num_threads=0)


def test_missing_delegate_is_one_clear_line(fixture_bundles):
    with pytest.raises(RuntimeLiteshipError, match=r"cannot load delegate libedgetpu\.so\.1: .*Edge TPU runtime"):
        create_interpreter(fixture_bundles / "classifier-int8" / "model.tflite", delegate="edgetpu")


@pytest.mark.parametrize("keep", [0.3, 0.95])
def test_truncated_model_is_refused_before_the_backend_sees_it(fixture_bundles, tmp_path, keep):
    """Regression: tflite-runtime 2.14 segfaults on a cut-off file; every backend must get a clear error."""
    raw = (fixture_bundles / "classifier-fp32" / "model.tflite").read_bytes()
    bad = tmp_path / "cut.tflite"
    bad.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(LiteshipError, match="cut.tflite: truncated"):
        create_interpreter(bad)


def test_xnnpack_off_gives_the_same_answers(fixture_bundles):
    model = fixture_bundles / "classifier-fp32" / "model.tflite"
    x = np.load(fixture_bundles / "classifier-fp32.reference.npz")["x"][:1]
    outs = []
    for xnn in (True, False):
        runner = create_interpreter(model, use_xnnpack=xnn).get_signature_runner()
        outs.append(next(iter(runner(image=x).values())))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)


def test_percentiles_are_computed_from_the_samples():
    stats = percentiles([float(v) for v in range(1, 101)])
    assert stats["min"] == 1 and stats["max"] == 100
    assert stats["p50"] == pytest.approx(50.5) and stats["p90"] == pytest.approx(90.1)
    assert stats["p99"] == pytest.approx(99.01) and len(stats["samples"]) == 100


@pytest.mark.parametrize("mode", ["fp32", "int8"])
def test_benchmark_result(fixture_bundles, mode):
    r = benchmark(fixture_bundles / f"classifier-{mode}", runs=7, warmup=2, threads=1)
    assert r["schema"] == SCHEMA and r["runs"] == 7 and len(r["latency_ms"]["samples"]) == 7
    lat = r["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert r["init_ms"] > 0 and r["first_inference_ms"] > 0
    assert r["peak_rss_bytes"] > 10 * 2**20
    assert r["model"]["quantization"] == mode and r["model"]["size_bytes"] > 1000
    assert r["runtime"]["threads"] == 1 and r["host"]["cores"] >= 1


def test_bench_module_prints_json(fixture_bundles):
    proc = subprocess.run([sys.executable, "-m", "liteship.runtime.bench", str(fixture_bundles / "classifier-fp16"),
                           "--runs", "3", "--json"], capture_output=True, text=True, check=True)
    r = json.loads(proc.stdout)
    assert r["runs"] == 3 and r["model"]["quantization"] == "fp16"


def test_bench_module_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "liteship.runtime.bench", str(tmp_path / "nothing")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and "no such bundle" in proc.stderr


def test_the_model_share_of_peak_rss_is_at_least_its_weights(tmp_path):
    """One peak RSS per run and the model's share: peak minus the runner's memory before the model was loaded.
    A 32 MB fp32 model must account for at least its weights (interpreter, numpy and Python are the baseline)."""
    tf = pytest.importorskip("tensorflow")
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2048,)), keras.layers.Dense(4096)])  # 8.4M weights, 33.6 MB in fp32
    data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    path = tmp_path / "big.tflite"
    path.write_bytes(data)
    proc = subprocess.run([sys.executable, "-m", "liteship.runtime.bench", str(path), "--runs", "2", "--warmup", "0",
                           "--json"], capture_output=True, text=True, check=True)
    r = json.loads(proc.stdout)
    assert r["peak_rss_bytes"] == r["baseline_rss_bytes"] + r["model_rss_bytes"]
    assert r["model_rss_bytes"] >= 0.95 * len(data), (r["model_rss_bytes"], len(data))
    assert r["baseline_rss_bytes"] > 10 * 2**20  # Python, numpy and the interpreter package, loaded before the model
    table = subprocess.run([sys.executable, "-m", "liteship.runtime.bench", str(path), "--runs", "2"],
                           capture_output=True, text=True, check=True).stdout
    assert re.search(r"peak RSS\s+\d+\.\d MiB \(model \d+\.\d MiB\)", table), table
