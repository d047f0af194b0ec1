"""`convert gpt2 --kv-cache int8`: the cache inputs become int8 with one calibrated scale per layer, XNNPACK runs
their DEQUANTIZE, and the runtime writes each new K/V row quantized; text stays that of the float32 cache."""

from __future__ import annotations

import numpy as np
import pytest

from tests.gpt2_fixtures import REFERENCE_PROMPT, TRAINING_TEXT, make_checkpoint

pytest.importorskip("tensorflow")
pytest.importorskip("torch")

NEW_TOKENS = 24


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """The same trained-like checkpoint as a dynamic-int8 bundle with the float32 cache and with the int8 one."""
    from liteship.convert.gpt2.export import export

    tmp = tmp_path_factory.mktemp("kvint8")
    make_checkpoint(tmp / "ckpt")
    (tmp / "calibration.txt").write_text(TRAINING_TEXT)
    opts = {"quant": "dynamic-int8", "max_context": 64, "prefill_len": 8}
    export(tmp / "ckpt", tmp / "float", **opts)
    export(tmp / "ckpt", tmp / "int8", kv_cache="int8", kv_calibration=tmp / "calibration.txt", **opts)
    return tmp


def test_cache_inputs_are_int8_with_the_calibrated_scales(bundles):
    from liteship.runtime.bundle import Bundle

    b = Bundle.open(bundles / "int8")
    kv = b.config["kv_cache"]
    assert kv["dtype"] == "int8" and kv["calibration_tokens"] > 50
    for key in ("decode", "prefill"):
        inputs = {t["name"]: t for t in b.signatures[key]["inputs"]}
        for name in ("k_0", "k_1", "v_0", "v_1"):
            assert inputs[name]["dtype"] == "int8", (key, name)
            q = inputs[name]["quantization"]
            assert q["zero_point"] == 0
            assert q["scale"] == pytest.approx(kv["ranges"][name[0]][int(name[2:])] / 127, rel=1e-6)
        assert inputs["mask"if key == "decode" else "cache_mask"]["dtype"] == "float32"
    float_inputs = {t["name"]: t for t in Bundle.open(bundles / "float").signatures["decode"]["inputs"]}
    assert float_inputs["k_0"]["dtype"] == "float32" and "kv_cache" not in Bundle.open(bundles / "float").config


def test_xnnpack_takes_the_dequantize(bundles):
    from tests.xnnpack_coverage import xnnpack_coverage

    got = xnnpack_coverage(bundles / "int8" / "model.tflite")
    assert "DEQUANTIZE" not in got["undelegated"], got
    assert got["undelegated"] == xnnpack_coverage(bundles / "float" / "model.tflite")["undelegated"]


@pytest.mark.parametrize("engine", ["compiled", "interpreter"])
def test_int8_cache_holds_a_quarter_and_keeps_the_text(bundles, engine):
    from liteship.runtime.generate import KVCacheSession
    from liteship.runtime.interpreter import compiled_model_available

    if engine == "compiled" and not compiled_model_available():
        pytest.skip("no LiteRT CompiledModel here")
    sessions = {name: KVCacheSession(bundles / name, engine=engine) for name in ("float", "int8")}
    sizes = {name: sum(a.nbytes for arrays in s._decode_cache for a in arrays) for name, s in sessions.items()}
    assert sizes["int8"] * 4 == sizes["float"]
    logits = {}
    for name, s in sessions.items():
        out = [s.prefill(REFERENCE_PROMPT)]
        for t in REFERENCE_PROMPT[:NEW_TOKENS]:  # teacher-forced: both caches see the same tokens
            out.append(s.decode(t)[None])
        logits[name] = np.concatenate(out)
    # The int8 cache's values are the float cache's rounded: close, but not the same numbers (the path is live)
    diff = np.abs(logits["int8"] - logits["float"])
    assert diff.max() > 0
    # This fixture's attention is sharp (random weights at 15x GPT-2's init range): observed mean |diff| 0.044 on
    # logits up to 6.9 (max 0.48), and the same choice on 37 of 40 positions; without equalization 0.035 (max
    # 0.75), 38 of 40 (equalized, the int8 weights round differently too: see the first chunk below). Writing rows unscaled, or reading
    # them at a wrong scale, moves every logit by whole units.
    assert diff.mean() < 0.02 * np.abs(logits["float"]).max(), diff.mean()
    agree = (logits["int8"].argmax(1) == logits["float"].argmax(1)).mean()
    assert agree >= 0.9, agree
    # Positions before any cached token (the prompt's first chunk) see no cache: there only the equalized weights
    # differ, in how int8 rounds them (kv_equalize.py; with fp32 weights equal to 1e-4: test_gpt2_kv_equalize.py)
    first = np.abs(logits["int8"][0] - logits["float"][0])
    assert first.max() < 0.2 and first.max() < diff.max() / 2, (first.max(), diff.max())  # seen: 0.084, 0.48


def test_engines_agree_on_the_int8_cache(bundles):
    from liteship.runtime.interpreter import compiled_model_available

    if not compiled_model_available():
        pytest.skip("no LiteRT CompiledModel here")
    from liteship.runtime.generate import KVCacheSession

    got = {}
    for engine in ("compiled", "interpreter"):
        s = KVCacheSession(bundles / "int8", engine=engine)
        got[engine] = np.concatenate([s.prefill(REFERENCE_PROMPT)] + [s.decode(t)[None] for t in range(5, 25)])
    np.testing.assert_allclose(got["compiled"], got["interpreter"], atol=1e-4, rtol=0)


def test_rows_are_rounded_and_saturate():
    from liteship.runtime.generate import _quantized

    got = _quantized(np.array([0.04, -0.06, 0.26, 100.0, -100.0], np.float32), 0.1)
    assert got.dtype == np.int8
    assert got.tolist() == [0, -1, 3, 127, -128]


def test_calibration_text_errors_name_the_option(tmp_path):
    from liteship.convert.gpt2.kv_int8 import calibration_windows
    from liteship.errors import ConvertError

    class Chars:
        def encode(self, text):
            return [ord(c) % 50 for c in text]

    with pytest.raises(ConvertError, match="--kv-calibration .*missing"):
        calibration_windows(tmp_path / "missing.txt", Chars(), 16)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConvertError, match="--kv-calibration .*bin.txt: not UTF-8 text"):
        calibration_windows(tmp_path / "bin.txt", Chars(), 16)
    (tmp_path / "ok.txt").write_text("x" * 40)
    assert [len(w) for w in calibration_windows(tmp_path / "ok.txt", Chars(), 16)] == [16, 16, 8]
    assert sum(len(w) for w in calibration_windows(tmp_path / "ok.txt", Chars(), 16, max_tokens=20)) == 20


def test_device_benchmark_phases_read_an_int8_cache(bundles):
    """benchmark_model's flags for an int8-cache bundle: the cache gets its shape and no value range (only the
    int32 index inputs do); it asked for a range for every integer input and failed on k_0."""
    from liteship.device.benchmark_model import gpt2_phases
    from liteship.runtime.bundle import Bundle

    b = Bundle.open(bundles / "int8")
    phases = gpt2_phases(b.model_path, b.config, (16,))
    decode = dict(f[2:].split("=", 1) for f in phases[1].input_flags)
    shapes = dict(zip(decode["input_layer"].split(","), decode["input_layer_shape"].split(":")))
    assert shapes["k_0"].split(",")[1] == "16"
    assert [r.split(",")[0] for r in decode["input_layer_value_range"].split(":")] == ["position"]


def test_each_dequantize_sits_before_its_reader_and_prefill_copies(bundles):
    """Where the DEQUANTIZEs go decides the memory (docs/gpt2_kv_cache.md): all at the front kept every layer's
    float32 copy alive at once (+80 MiB at 896 tokens, 124M), and prefill's BATCH_MATMUL reading one directly kept
    18 MiB more per 128-token chunk. So: each right before the operator that reads it, and in prefill through an
    ADD (of 0) first."""
    from liteship.runtime.tflite_file import read_model

    m = read_model(bundles / "int8" / "model.tflite")
    for sig in m.signatures:
        sg = m.subgraphs[sig.subgraph]
        ops = [(m.operator_names[c], ins, outs) for c, ins, outs in zip(sg.op_codes, sg.op_inputs, sg.op_outputs)]
        for name in ("k_0", "v_0", "k_1", "v_1"):
            [at] = [i for i, (op, ins, _) in enumerate(ops) if op == "DEQUANTIZE" and ins == [sig.inputs[name]]]
            out = ops[at][2][0]
            reader = ops[at + 1]
            assert out in reader[1], (sig.key, name, reader[0])  # the next operator reads it
            assert not any(out in ins for _, ins, _ in ops[:at]), (sig.key, name)
            assert (reader[0] == "ADD") == (sig.key == "prefill"), (sig.key, name, reader[0])
