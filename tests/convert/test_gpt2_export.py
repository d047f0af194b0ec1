"""GPT-2 checkpoint -> bundle: the TFLite prefill/decode signatures against transformers' PyTorch GPT2LMHeadModel."""

from __future__ import annotations

import json

import numpy as np
import pytest

from liteship.convert.gpt2.config import tiny
from liteship.errors import ConvertError
from tests.gpt2_fixtures import BUNDLE_OPTIONS, gpt2_bundles, make_checkpoint, previous_layout, torch_logits

pytest.importorskip("tensorflow")
pytest.importorskip("torch")



def run_sequence(bundle, seq, n_prompt, **options):
    """Logits (len(seq), V): prefill of seq[:n_prompt] (several chunks), then one decode per further token."""
    from liteship.runtime.generate import KVCacheSession

    s = KVCacheSession(bundle, **options)
    out = [s.prefill(seq[:n_prompt])]
    out += [s.decode(t)[None] for t in seq[n_prompt:]]
    return np.concatenate(out)


def reference(root):
    ref = np.load(root / "gpt2.reference.npz")
    return list(ref["prompt"]) + list(ref["continuation"]), len(ref["prompt"]), ref["logits"], list(ref["continuation"])


@pytest.mark.parametrize("grow_cache", [True, False], ids=["grown-cache", "full-cache"])
def test_fp32_logits_match_pytorch_for_prefill_and_every_decode_step(tmp_path_factory, monkeypatch, grow_cache):
    """Also with decode's cache grown in steps of 16 slots (C=64: it is re-allocated at 16, 32, 48 and 64 slots
    across prefill chunks and decode steps, keeping the filled slots each time) and with all 64 from the start."""
    monkeypatch.setattr("liteship.runtime.generate.SLOT_STEP", 16)
    root = gpt2_bundles(tmp_path_factory)
    seq, n_prompt, want, _ = reference(root)
    got = run_sequence(root / "gpt2-fp32", seq, n_prompt, grow_cache=grow_cache)
    # Observed max |diff| ~5e-6 with logits up to ~7: float32 summation order differs between XNNPACK and
    # PyTorch. 1e-4 leaves 20x headroom and is still 1e4 times smaller than any real bug (a wrong cache slot or
    # mask moves logits by O(1)).
    np.testing.assert_allclose(got[:n_prompt], want[:n_prompt], atol=1e-4, rtol=0, err_msg="prefill")
    for i in range(n_prompt, len(seq)):
        np.testing.assert_allclose(got[i], want[i], atol=1e-4, rtol=0, err_msg=f"decode step at position {i}")


def test_fp32_greedy_continuation_is_token_for_token_pytorchs(tmp_path_factory):
    from liteship.runtime.generate import TextGenerator

    root = gpt2_bundles(tmp_path_factory)
    _, _, _, continuation = reference(root)
    prompt = list(np.load(root / "gpt2.reference.npz")["prompt"])
    got = list(TextGenerator(root / "gpt2-fp32").generate_ids(prompt, 40, temperature=0, stop_on_eos=False))
    assert len(continuation) == 40
    assert got == continuation


@pytest.mark.parametrize("quant,max_rel,rms_rel,top1", [
    # fp16 stores weights rounded to 11 significant bits (relative error <= 2^-11 = 4.9e-4 each); through two
    # layers we observed max |diff| = 1.0e-3 x max|logit| and rms 8e-4 x std(logits). Bounds: 10x that.
    ("fp16", 1e-2, 1e-2, 1.0),
    # dynamic-int8: per-channel int8 weights plus int8 activations quantized at run time, each rounding by up to
    # half a step (~0.4% of the range), compounded over 9 matrix products. With trained-like weights attention is
    # peaked (q and k x2, so their rounding errors reach the attention logits x4) and one position can switch which
    # key it attends to: observed max 15% (at one position), rms 4.8%, top-1 agreement 97% (fresh-init weights gave
    # 4.7%, 3% and 93%). Bounds: the max at 1.7x observed, rms and top-1 kept where they were; a broken cache slot,
    # mask or table moves logits by ~100%.
    ("dynamic-int8", 0.25, 0.06, 0.8),
])
def test_quantized_logits_within_stated_tolerance(tmp_path_factory, quant, max_rel, rms_rel, top1):
    root = gpt2_bundles(tmp_path_factory, quants=(quant,))
    seq, n_prompt, want, _ = reference(root)
    got = run_sequence(root / f"gpt2-{quant}", seq, n_prompt)
    diff = np.abs(got - want)
    assert diff.max() <= max_rel * np.abs(want).max()
    assert np.sqrt((diff ** 2).mean()) <= rms_rel * want.std()
    assert (got.argmax(1) == want.argmax(1)).mean() >= top1


def test_bundle_carries_signatures_tokenizer_and_generation_config(tmp_path_factory):
    from liteship.runtime.bundle import Bundle

    root = gpt2_bundles(tmp_path_factory)
    b = Bundle.open(root / "gpt2-fp32")
    assert (b.family, b.task, b.quantization) == ("gpt2", "text-generation", "fp32")
    C, P = BUNDLE_OPTIONS["max_context"], BUNDLE_OPTIONS["prefill_len"]
    assert b.config["max_context"] == C and b.config["prefill_len"] == P
    assert b.config["eos_token_id"] == 299 and b.config["eos_token"] == "<|endoftext|>"
    assert b.config["model"]["vocab_size"] == 300
    assert b.config["generation"]["do_sample"] is False
    assert b.asset("vocab").is_file() and b.asset("merges").is_file()
    specs = {s: {t["name"]: t for t in b.signatures[s]["inputs"] + b.signatures[s]["outputs"]}
             for s in ("prefill", "decode")}
    # both leave the cache's slot count open (-1): the runtime sizes each cache to the slots in use; prefill's
    # rows (which positions get logits) is open too: 1 in generation, all T for evaluation; and so is prefill's
    # chunk length T, with its mask in two blocks and each layer's K/V an output of its own
    assert specs["decode"]["mask"]["shape"] == [1, -1] and "mask" not in specs["prefill"]
    assert specs["prefill"]["cache_mask"]["shape"] == [1, -1] and specs["prefill"]["chunk_mask"]["shape"] == [-1, -1]
    assert specs["decode"]["k_1"]["shape"] == [2, -1, 16] and specs["decode"]["v_1"]["shape"] == [2, -1, 16]
    assert specs["prefill"]["k_1"]["shape"] == [2, -1, 16] and specs["prefill"]["rows"]["shape"] == [-1]
    assert specs["decode"]["logits"]["shape"] == [1, 300] and specs["decode"]["embeds"]["shape"] == [1, 32]
    assert specs["prefill"]["embeds"]["shape"] == [-1, 32] and specs["prefill"]["positions"]["shape"] == [-1]
    assert specs["prefill"]["logits"]["shape"] == [-1, 300] and specs["decode"]["k_new"]["shape"] == [2, 2, 1, 16]
    assert {n for n in specs["prefill"] if "_new" in n} == {"k_new_0", "k_new_1", "v_new_0", "v_new_1"}
    assert specs["prefill"]["k_new_1"]["shape"] == [2, -1, 16] and specs["prefill"]["v_new_0"]["shape"] == [2, -1, 16]


@pytest.mark.parametrize("quant,dtype", [("fp32", "float32"), ("dynamic-int8", "int8")])
def test_token_table_is_stored_once_and_never_dequantized_whole(tmp_path_factory, quant, dtype):
    """Regressions: an in-graph GATHER made the int8 converter store a second (per-tensor) copy of the 50257 x 768
    table, and an earlier prototype DEQUANTIZEd the whole table every step. The tied table must be one buffer,
    used only by the LM head, with no float32 [V, E] tensor beside an int8 one."""
    from liteship.runtime.tflite_file import read_model

    root = gpt2_bundles(tmp_path_factory, quants=(quant,))
    model = read_model(root / f"gpt2-{quant}" / "model.tflite")
    tables = [t for sg in model.subgraphs for t in sg.tensors if t.shape == [300, 32]]
    assert {t.buffer for t in tables} and len({t.buffer for t in tables}) == 1, "more than one copy of the table"
    assert {t.dtype for t in tables} == {dtype}
    if dtype == "int8":
        assert len(tables[0].scale) == 300, "per-row scales, so one row can be dequantized on its own"


def test_added_tokens_checkpoint_converts_and_matches(tmp_path):
    from liteship.convert.gpt2.export import export

    cfg = tiny(vocab_size=302)
    model = make_checkpoint(tmp_path / "ckpt", cfg, added=["<|user|>", "<|bot|>"])
    export(tmp_path / "ckpt", tmp_path / "b", quant="fp32", max_context=16, prefill_len=4)
    seq = [300, 5, 301, 17, 299, 2, 300, 9]  # the added ids are real rows of the grown table
    got = run_sequence(tmp_path / "b", seq, 5)
    assert got.shape == (8, 302)
    np.testing.assert_allclose(got, torch_logits(model, seq), atol=1e-4, rtol=0)  # tolerance: see the fp32 test
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["assets"]["added_tokens"]


def test_bad_options_are_refused(tmp_path_factory, tmp_path):
    from liteship.convert.gpt2.export import export

    ckpt = gpt2_bundles(tmp_path_factory) / "gpt2-checkpoint"
    with pytest.raises(ConvertError, match=r"--max-context 65 must be between 2 and the model's n_positions \(64\)"):
        export(ckpt, tmp_path / "x", max_context=65)
    with pytest.raises(ConvertError, match=r"--prefill-len 20 must be between 1 and --max-context \(16\)"):
        export(ckpt, tmp_path / "x", max_context=16, prefill_len=20)
    with pytest.raises(ConvertError, match="GPT-2 supports --quant fp32, fp16, dynamic-int8 or int4, not int8"):
        export(ckpt, tmp_path / "x", quant="int8")
    assert not (tmp_path / "x").exists()


def test_cli_convert_gpt2(tmp_path_factory, tmp_path):
    from click.testing import CliRunner

    from liteship.convert.gpt2.cli import command
    from liteship.runtime.bundle import Bundle

    ckpt = gpt2_bundles(tmp_path_factory) / "gpt2-checkpoint"
    res = CliRunner().invoke(command, [str(ckpt), "--out", str(tmp_path / "b"), "--quant", "fp16",
                                       "--max-context", "32", "--prefill-len", "4"])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "fp16" in res.output
    b = Bundle.open(tmp_path / "b")
    assert (b.quantization, b.config["max_context"], b.config["prefill_len"]) == ("fp16", 32, 4)


def test_a_bundle_with_a_fixed_decode_cache_still_runs(tmp_path, monkeypatch):
    """Bundles converted before the slot counts were left open have a fixed [H, C, hd] cache in both signatures
    and prefill logits for all P positions (no `rows`): they run with all C slots, and asking to grow the cache
    says to re-convert."""
    from liteship.convert.gpt2.export import export
    from liteship.errors import RuntimeLiteshipError
    from liteship.runtime.generate import KVCacheSession

    ckpt = tmp_path / "ckpt"
    make_checkpoint(ckpt)
    export(ckpt, tmp_path / "new", quant="fp32", **BUNDLE_OPTIONS)
    with monkeypatch.context() as patch:
        previous_layout(patch, fixed_cache=True)
        export(ckpt, tmp_path / "old", quant="fp32", **BUNDLE_OPTIONS)

    old = KVCacheSession(tmp_path / "old")
    assert not old.grow_cache and old.slots == BUNDLE_OPTIONS["max_context"]
    assert not old._prefill_open and old.prefill_slots == BUNDLE_OPTIONS["max_context"]
    assert not old._prefill_rows_open and old.prefill_rows == BUNDLE_OPTIONS["prefill_len"]
    last = old.prefill(list(range(3, 14)), all_logits=False)  # 11 tokens: the last row of a 2nd, partial chunk
    np.testing.assert_allclose(last, run_sequence(tmp_path / "new", list(range(3, 14)), 11)[-1:], atol=1e-5, rtol=0)
    ids = list(range(3, 40))
    np.testing.assert_allclose(run_sequence(tmp_path / "old", ids, 12), run_sequence(tmp_path / "new", ids, 12),
                               atol=1e-5, rtol=0)  # same weights, same graph up to the cache's shape
    with pytest.raises(RuntimeLiteshipError, match="fixed cache of 64 slots.*re-convert"):
        KVCacheSession(tmp_path / "old", grow_cache=True)


@pytest.mark.parametrize("engine", ["compiled", "interpreter"])
def test_a_bundle_with_a_fixed_prefill_chunk_still_runs(tmp_path, monkeypatch, engine):
    """Bundles converted before prefill's chunk was left open (embeds[P, E], one mask[P, S+P], stacked
    k_new/v_new[L, H, P, hd]) run in chunks of P and give the logits and greedy tokens of the new layout."""
    from liteship.convert.gpt2.export import export
    from liteship.runtime.generate import KVCacheSession, TextGenerator
    from liteship.runtime.interpreter import compiled_model_available

    if engine == "compiled" and not compiled_model_available():
        pytest.skip("the compiled engine needs ai-edge-litert 2.x on x86-64")
    monkeypatch.setattr("liteship.runtime.generate.SLOT_STEP", 16)
    ckpt = tmp_path / "ckpt"
    model = make_checkpoint(ckpt)
    export(ckpt, tmp_path / "new", quant="fp32", **BUNDLE_OPTIONS)
    with monkeypatch.context() as patch:
        previous_layout(patch)
        export(ckpt, tmp_path / "old", quant="fp32", **BUNDLE_OPTIONS)
    from liteship.runtime.bundle import Bundle

    specs = {t["name"]: t["shape"] for t in Bundle.open(tmp_path / "old").signatures["prefill"]["outputs"]}
    assert specs["k_new"] == [2, 2, BUNDLE_OPTIONS["prefill_len"], 16]  # it is the old layout

    old = KVCacheSession(tmp_path / "old", engine=engine)
    assert not old._chunk_open and not old._kv_per_layer and old.chunk_length(50) == BUNDLE_OPTIONS["prefill_len"]
    ids = list(range(3, 45))  # 30 through prefill: 4 chunks, the last partial; the cache grows 16 -> 32 -> 48
    got = np.concatenate([old.prefill(ids[:30])] + [old.decode(t)[None] for t in ids[30:]])
    np.testing.assert_allclose(got, torch_logits(model, ids), atol=1e-4, rtol=0)  # tolerance: see the fp32 test
    np.testing.assert_allclose(got, run_sequence(tmp_path / "new", ids, 30, engine=engine), atol=1e-5, rtol=0)
    prompt = list(range(7, 30))
    want = list(TextGenerator(tmp_path / "new").generate_ids(prompt, 20, temperature=0, stop_on_eos=False))
    assert list(TextGenerator(tmp_path / "old").generate_ids(prompt, 20, temperature=0, stop_on_eos=False)) == want
