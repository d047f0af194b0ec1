"""The Python runner's GPT-2 latency times a real decode step: one after a stated number of filled cache slots,
not the one-slot cache that filling decode's open dimension with 1 gave."""

from __future__ import annotations

import json

import numpy as np
import pytest

import liteship.runtime.bench as bench_module
from liteship.runtime.bench import benchmark, decode_inputs, main
from tests.gpt2_fixtures import BUNDLE_OPTIONS, gpt2_bundles


@pytest.fixture(scope="module")
def gpt2_fp32(tmp_path_factory):
    return gpt2_bundles(tmp_path_factory) / "gpt2-fp32"


@pytest.fixture
def decode_calls(monkeypatch):
    """Records the input shapes and positions of every call the benchmark makes to a signature runner."""
    calls = []
    real_create = bench_module.create_interpreter

    class Recorder:
        def __init__(self, runner):
            self._runner = runner

        def __getattr__(self, name):
            return getattr(self._runner, name)

        def __call__(self, **inputs):
            calls.append({n: (v.shape, v.copy() if n in ("position", "mask") else None) for n, v in inputs.items()})
            return self._runner(**inputs)

    def create(*args, **kwargs):
        interp = real_create(*args, **kwargs)
        get_runner = interp.get_signature_runner
        interp.get_signature_runner = lambda *a, **k: Recorder(get_runner(*a, **k))
        return interp

    monkeypatch.setattr(bench_module, "create_interpreter", create)
    return calls


def test_decode_is_timed_over_the_stated_context(gpt2_fp32, decode_calls):
    result = benchmark(gpt2_fp32, runs=3, warmup=1, threads=1, generation=False, context=40)
    assert result["signature"] == "decode" and result["decode_context"] == 40
    assert len(decode_calls) == 1 + 1 + 3  # first inference, warm-up, timed runs: all at the same shapes
    for call in decode_calls:
        heads_slots_dim = call["k_0"][0]
        assert heads_slots_dim[1] == 40  # (H, slots, head_dim): 40 slots, not one
        assert call["v_0"][0][1] == 40
        mask_shape, mask = call["mask"]
        assert mask_shape == (1, 41) and not mask.any()  # every filled slot and the new token visible
        assert call["position"][1].tolist() == [40]


def test_context_stays_inside_the_bundle(gpt2_fp32, decode_calls):
    result = benchmark(gpt2_fp32, runs=1, warmup=0, threads=1, generation=False, context=10_000)
    last = BUNDLE_OPTIONS["max_context"] - 1  # the new token's position must exist in the position table
    assert result["decode_context"] == last
    assert decode_calls[-1]["k_0"][0][1] == last and decode_calls[-1]["position"][1].tolist() == [last]


def test_generation_block_decodes_at_the_same_context(gpt2_fp32):
    result = benchmark(gpt2_fp32, runs=1, warmup=0, threads=1, context=32)
    assert result["decode_context"] == 32 == result["generation"]["context"]


def test_fixed_cache_bundles_report_their_own_slot_count():
    details = {"embeds": {"shape": np.array([1, 8]), "shape_signature": np.array([1, 8]), "dtype": np.float32},
               "mask": {"shape": np.array([1, 17]), "shape_signature": np.array([1, 17]), "dtype": np.float32},
               "k_0": {"shape": np.array([2, 16, 4]), "shape_signature": np.array([2, 16, 4]), "dtype": np.float32}}
    inputs, slots = decode_inputs(details, context=100)
    assert slots == 16 and inputs["k_0"].shape == (2, 16, 4) and inputs["mask"].shape == (1, 17)


def test_cli_states_the_context(gpt2_fp32, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main([str(gpt2_fp32), "--runs", "2", "--warmup", "0", "--threads", "1", "--no-generation",
                 "--context", "24", "--json", str(out)]) == 0
    assert "decode at 24 filled cache slots" in capsys.readouterr().out
    assert json.loads(out.read_text())["decode_context"] == 24
    assert main([str(gpt2_fp32), "--context", "0"]) == 1
    assert "error: --context must be at least 1, not 0" in capsys.readouterr().err


def test_other_signatures_have_no_decode_context(gpt2_fp32):
    assert benchmark(gpt2_fp32, runs=1, warmup=0, threads=1, signature="prefill",
                     generation=False)["decode_context"] is None
