"""The generation loop over a tiny GPT-2 bundle: streaming, stop strings, eos, sampling, context limits, the CLI.
Correctness against PyTorch is in tests/convert/test_gpt2_export.py; here the references are the bundle's own
reference file (PyTorch logits) and the loop's own greedy output."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from liteship.errors import RuntimeLiteshipError
from liteship.runtime.generate import KVCacheSession, TextGenerator, choose_token
from liteship.runtime.generation_bench import benchmark_generation
from tests.gpt2_fixtures import gpt2_bundles


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return gpt2_bundles(tmp_path_factory)


@pytest.fixture(scope="module")
def gen(root):
    return TextGenerator(root / "gpt2-fp32", threads=1)


def test_stream_pieces_join_to_the_text_of_the_ids(gen):
    pieces = []
    result = gen.generate("the quick brown fox", 24, temperature=0, stream=pieces.append)
    assert result.finish_reason in ("length", "eos")
    assert "".join(pieces) == result.text == gen.tokenizer.decode(result.token_ids)
    ids = list(gen.generate_ids(gen.tokenizer.encode("the quick brown fox"), 24, temperature=0))
    assert ids == result.token_ids


def test_prefill_after_decode_continues_the_sequence(root):
    """Chunked prefill, decode, then prefill again: the prefill cache must be re-synced from the decode cache."""
    ref = np.load(root / "gpt2.reference.npz")
    seq = list(ref["prompt"]) + list(ref["continuation"])
    s = KVCacheSession(root / "gpt2-fp32")
    got = [s.prefill(seq[:10])] + [s.decode(t)[None] for t in seq[10:13]] + [s.prefill(seq[13:30])]
    np.testing.assert_allclose(np.concatenate(got), ref["logits"][:30], atol=1e-4, rtol=0)  # as the fp32 export test


@pytest.mark.parametrize("quant", ["fp32", "dynamic-int8"])
def test_decode_cache_grows_with_the_text_and_shrinks_on_reset(tmp_path_factory, monkeypatch, quant):
    """Decode's cache starts at one step of slots and grows a step at a time, keeping what it holds: logits
    equal those of a session that has all C slots from the start, through prefill chunks and decode steps that
    cross step boundaries, and after prefill resumes on a grown cache. For int8 too: its token rows are read
    from the model's weights, which a re-allocation must not move."""
    monkeypatch.setattr("liteship.runtime.generate.SLOT_STEP", 16)
    root = gpt2_bundles(tmp_path_factory, quants=(quant,))
    bundle = root / f"gpt2-{quant}"
    ref = np.load(root / "gpt2.reference.npz")
    seq = list(ref["prompt"]) + list(ref["continuation"])  # 60 tokens, C = 64

    def run(s):
        slots = []
        out = [s.prefill(seq[:20])]
        slots.append(s.slots)
        for t in seq[20:40]:
            out.append(s.decode(t)[None])
            slots.append(s.slots)
        out.append(s.prefill(seq[40:60]))
        slots.append(s.slots)
        return np.concatenate(out), slots

    grown, full = KVCacheSession(bundle), KVCacheSession(bundle, grow_cache=False)
    assert (grown.slots, full.slots) == (16, 64)
    got, slots = run(grown)
    want, full_slots = run(full)
    assert slots[0] == 32 and slots[1:21] == [32] * 12 + [48] * 8 and slots[-1] == 64  # 20, then 21..40 tokens
    assert set(full_slots) == {64}
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)  # masked slots add exact zeros; only sum order differs
    grown.reset()
    assert grown.slots == 16 and grown.length == 0
    again = grown.prefill(seq[:5])
    np.testing.assert_allclose(again, want[:5], atol=1e-5, rtol=0)
    if quant == "fp32":  # against PyTorch, with the fp32 export test's tolerance
        np.testing.assert_allclose(got, ref["logits"][:60], atol=1e-4, rtol=0)
        np.testing.assert_allclose(again, ref["logits"][:5], atol=1e-4, rtol=0)


def test_fp16_bundles_keep_the_full_cache_unless_asked(tmp_path_factory, monkeypatch):
    """A growth re-prepares XNNPACK's subgraph, which for fp16 weights means unpacking them again (0.4-1.5 s and
    +500 MB at 124M): by default fp16 bundles attend over all slots; grow_cache=True still grows them."""
    monkeypatch.setattr("liteship.runtime.generate.SLOT_STEP", 16)
    root = gpt2_bundles(tmp_path_factory, quants=("fp16", "dynamic-int8"))
    assert not KVCacheSession(root / "gpt2-fp16").grow_cache
    assert KVCacheSession(root / "gpt2-dynamic-int8").grow_cache
    s = KVCacheSession(root / "gpt2-fp16", grow_cache=True)
    assert s.grow_cache and s.slots == 16


def test_stop_string_ends_before_it_and_is_not_streamed(gen):
    full = gen.generate("the lazy dog", 30, temperature=0).text
    assert len(full) >= 12
    stop = full[6:9]
    pieces = []
    result = gen.generate("the lazy dog", 30, temperature=0, stop=[stop, "never-appears"], stream=pieces.append)
    assert result.text == full[: full.find(stop)]
    assert "".join(pieces) == result.text and result.finish_reason == "stop"


def test_eos_stops_generation(gen, root, monkeypatch):
    ref = np.load(root / "gpt2.reference.npz")
    cont = list(ref["continuation"])
    k = next(i for i in range(3, len(cont)) if cont[i] not in cont[:i])  # first new token after a few
    monkeypatch.setitem(gen.config, "eos_token_id", int(cont[k]))
    out = list(gen.generate_ids(list(ref["prompt"]), 40, temperature=0))
    assert out == cont[:k]


def test_prompt_longer_than_context_is_an_error_or_truncated(gen):
    ids = list(range(1, 65))  # the bundle's context is 64
    with pytest.raises(RuntimeLiteshipError, match="the prompt is 64 tokens; this bundle's context is 64"):
        list(gen.generate_ids(ids, 4))
    out = list(gen.generate_ids(ids, 4, temperature=0, truncate=True, stop_on_eos=False))
    assert len(out) == 4


def test_generation_stops_when_the_context_is_full(gen):
    from liteship.runtime.generate import Generation

    result = Generation("")
    out = list(gen.generate_ids(list(range(1, 61)), 10, temperature=0, stop_on_eos=False, result=result))
    assert len(out) == 5 and result.finish_reason == "context"  # 60 + 4 decoded = 64 slots, plus the last choice


def test_sampling_is_seeded_and_top_k_1_is_greedy(gen):
    prompt = "over the"
    a = gen.generate(prompt, 16, temperature=1.0, top_k=0, top_p=1.0, seed=3).token_ids
    b = gen.generate(prompt, 16, temperature=1.0, top_k=0, top_p=1.0, seed=3).token_ids
    c = gen.generate(prompt, 16, temperature=1.0, top_k=0, top_p=1.0, seed=4).token_ids
    assert a == b and a != c
    greedy = gen.generate(prompt, 16, temperature=0).token_ids
    assert gen.generate(prompt, 16, temperature=1.0, top_k=1, seed=5).token_ids == greedy


def test_choose_token_respects_top_k_and_top_p():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    picks = [choose_token(logits, temperature=1.0, top_k=2, top_p=1.0, rng=rng) for _ in range(400)]
    assert set(picks) == {0, 1}
    picks = [choose_token(logits, temperature=1.0, top_k=0, top_p=0.7, rng=rng) for _ in range(400)]
    assert set(picks) == {0, 1}  # 0.5 < 0.7 <= 0.8: the two likeliest
    picks = [choose_token(logits, temperature=1.0, top_k=0, top_p=1.0, rng=rng) for _ in range(2000)]
    assert abs(picks.count(3) / 2000 - 0.05) < 0.02  # 4.5 sigma for a binomial(2000, 0.05)
    assert choose_token(logits, temperature=0, top_k=0, top_p=1.0, rng=rng) == 0


def test_benchmark_generation_reports_the_generation_block(root):
    g = benchmark_generation(root / "gpt2-fp32", threads=1, prompt_tokens=16, new_tokens=4, context=32,
                             contexts=(64,))
    assert g["prefill_tokens"] == 16 and g["decode_tokens"] == 4 and g["context"] == 32
    assert g["prefill_tok_s"] > 0 and g["decode_tok_s"] > 0
    assert set(g["decode_tok_s_by_context"]) == {"32", "64"}
    assert g["kv_cache"] == "all 64 slots"  # C = 64 is below one growth step (128 slots)


def test_cli_streams_the_same_text_as_the_api(gen, root):
    from liteship.runtime.text_cli import command
    from tests.conftest import cli_runner

    want = gen.generate("the sun", 12, temperature=0).text
    res = cli_runner().invoke(command, [str(root / "gpt2-fp32"), "--prompt", "the sun", "--max-new-tokens", "12",
                                       "--temperature", "0", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert res.output == want + "\n"
    for flags, cache in (([], "grows in steps of 16 slots"), (["--full-cache"], "all 64 slots")):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("liteship.runtime.generate.SLOT_STEP", 16)
            res = cli_runner().invoke(command, [str(root / "gpt2-fp32"), "--prompt", "the sun", "--max-new-tokens",
                                               "12", "--temperature", "0", "--stats", *flags])
        assert res.exit_code == 0 and res.stdout == want + "\n"
        assert f"KV cache: {cache}" in res.stderr
    res = cli_runner().invoke(command, [str(root / "gpt2-fp32"), "--prompt", "x " * 80])
    assert res.exit_code != 0 and "context is 64" in str(res.exception)


def test_prefill_last_logits_only_equals_the_last_row(root):
    ref = np.load(root / "gpt2.reference.npz")
    s = KVCacheSession(root / "gpt2-fp32")
    last = s.prefill(list(ref["prompt"]), all_logits=False)
    assert last.shape == (1, 300)
    np.testing.assert_allclose(last[0], ref["logits"][len(ref["prompt"]) - 1], atol=1e-4, rtol=0)  # fp32 tolerance


def test_prefill_cache_holds_only_the_slots_a_chunk_attends_to(root, monkeypatch):
    """The interpreter engine's prefill has its own cache copy; it was a fixed C slots beside decode's (72 MiB at
    124M, C=1024). Now a first chunk gets one masked slot, later chunks the filled slots rounded up to a step, and
    reset() shrinks it again; logits equal those of a session with all C slots everywhere, and PyTorch's."""
    monkeypatch.setattr("liteship.runtime.generate.SLOT_STEP", 16)
    ref = np.load(root / "gpt2.reference.npz")
    seq = list(ref["prompt"]) + list(ref["continuation"])  # 60 tokens, chunks of P = 8, C = 64
    grown = KVCacheSession(root / "gpt2-fp32", engine="interpreter")
    full = KVCacheSession(root / "gpt2-fp32", grow_cache=False, engine="interpreter")
    H, hd = 2, 16
    assert grown.tensors()["prefill"]["k_0"].shape == (H, 1, hd)  # layer 0's cache copy: (H, slots, hd)
    assert full.tensors()["prefill"]["k_0"].shape == (H, 64, hd)
    first = grown.prefill(seq[:8])  # one chunk, nothing cached before it
    assert grown.prefill_slots == 1
    rest = grown.prefill(seq[8:40])  # chunks starting at 8, 16, 24, 32 attend to 16, 16, 32, 32 slots
    assert grown.prefill_slots == 32 and grown.tensors()["prefill"]["k_0"].shape == (H, 32, hd)
    got = np.concatenate([first, rest])
    np.testing.assert_allclose(got, full.prefill(seq[:40]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got, ref["logits"][:40], atol=1e-4, rtol=0)  # the fp32 export test's tolerance
    grown.reset()
    assert grown.prefill_slots == 1 and grown.tensors()["prefill"]["k_0"].shape == (H, 1, hd)


def test_generation_prefill_computes_one_row_of_logits(root):
    """Generation's prefill asks the graph for the last position's logits only (`rows` of length 1): the LM head
    runs on one row, not P, and the output is one row of V floats. Asking for all logits again gives all P rows;
    switching back and forth changes no value."""
    ref = np.load(root / "gpt2.reference.npz")
    prompt = list(ref["prompt"])  # 11 tokens: a full chunk of 8, then 3
    s = KVCacheSession(root / "gpt2-fp32")
    last = s.prefill(prompt, all_logits=False)
    assert s.prefill_rows == 1 and s.tensors()["prefill"]["logits"].shape == (1, 300)
    np.testing.assert_allclose(last[0], ref["logits"][len(prompt) - 1], atol=1e-4, rtol=0)  # fp32 tolerance
    s.reset()
    every = s.prefill(prompt)
    assert s.prefill_rows == 8 and s.tensors()["prefill"]["logits"].shape == (8, 300)
    np.testing.assert_allclose(every, ref["logits"][:len(prompt)], atol=1e-4, rtol=0)
    s.reset()
    np.testing.assert_array_equal(s.prefill(prompt, all_logits=False), last)


def compiled_available():
    from liteship.runtime.interpreter import compiled_model_available
    return compiled_model_available()


needs_compiled = pytest.mark.skipif("not compiled_available()", reason="needs ai-edge-litert 2.x (CompiledModel)")


@needs_compiled
@pytest.mark.parametrize("quant", ["fp32", "dynamic-int8"])
def test_compiled_engine_equals_the_interpreter_through_chunks_steps_and_growth(tmp_path_factory, monkeypatch,
                                                                                 quant):
    """The CompiledModel engine (weights packed once into a file, numpy buffers bound zero-copy) gives the same
    logits as the Interpreter engine through prefill chunks, decode steps, cache growths and a prefill that
    resumes on a grown cache; fp32 also equals PyTorch."""
    monkeypatch.setattr("liteship.runtime.generate.SLOT_STEP", 16)
    root = gpt2_bundles(tmp_path_factory, quants=(quant,))
    ref = np.load(root / "gpt2.reference.npz")
    seq = list(ref["prompt"]) + list(ref["continuation"])  # 60 tokens, C = 64

    def run(engine):
        s = KVCacheSession(root / f"gpt2-{quant}", engine=engine)
        assert s.engine == engine
        out = [s.prefill(seq[:20])] + [s.decode(t)[None] for t in seq[20:40]] + [s.prefill(seq[40:60])]
        assert s.slots == 64
        return np.concatenate(out)

    compiled, interpreted = run("compiled"), run("interpreter")
    np.testing.assert_allclose(compiled, interpreted, atol=1e-5, rtol=0)  # same kernels; only sum order may differ
    if quant == "fp32":
        np.testing.assert_allclose(compiled, ref["logits"][:60], atol=1e-4, rtol=0)  # the fp32 export test's


@needs_compiled
def test_weight_cache_is_a_file_keyed_by_model_and_backend_and_reused(tmp_path_factory, tmp_path, monkeypatch):
    """The compiled engine's packed weights go to LITESHIP_CACHE/xnnpack/<model sha256>-<backend version>: the
    first session writes the file, a second maps it (the file is not rewritten) and gives the same logits."""
    from liteship.runtime.bundle import Bundle
    from liteship.runtime.interpreter import backend_version

    monkeypatch.setenv("LITESHIP_CACHE", str(tmp_path / "cache"))
    root = gpt2_bundles(tmp_path_factory, quants=("dynamic-int8",))  # asked for, not left by another test
    bundle = Bundle.open(root / "gpt2-dynamic-int8")
    prompt = list(np.load(root / "gpt2.reference.npz")["prompt"])
    first = KVCacheSession(bundle, engine="compiled")
    path = first.weight_cache
    assert path.parent == tmp_path / "cache" / "xnnpack" and path.is_file() and path.stat().st_size > 0
    assert path.name.startswith(bundle.sha256()[:24]) and backend_version().replace(" ", "-") in path.name
    want = first.prefill(prompt, all_logits=False)
    written = (path.stat().st_mtime_ns, path.stat().st_size)
    second = KVCacheSession(bundle, engine="compiled")
    assert second.weight_cache == path and (path.stat().st_mtime_ns, path.stat().st_size) == written
    np.testing.assert_array_equal(second.prefill(prompt, all_logits=False), want)


@needs_compiled
def test_engine_choice(root, tmp_path, monkeypatch):
    """auto picks the compiled engine when LiteRT has it, the interpreter when asked; an unwritable cache folder
    means no weight cache file (still correct); an unknown engine is refused."""
    assert KVCacheSession(root / "gpt2-fp32").engine == "compiled"
    assert KVCacheSession(root / "gpt2-fp32", engine="interpreter").engine == "interpreter"
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("LITESHIP_CACHE", str(blocked))
    s = KVCacheSession(root / "gpt2-fp32", engine="compiled")
    assert s.weight_cache is None
    ref = np.load(root / "gpt2.reference.npz")
    np.testing.assert_allclose(s.prefill(list(ref["prompt"])), ref["logits"][:len(ref["prompt"])], atol=1e-4, rtol=0)
    with pytest.raises(RuntimeLiteshipError, match="unknown engine 'gpu'"):
        KVCacheSession(root / "gpt2-fp32", engine="gpu")


@needs_compiled
def test_compiled_engine_has_one_cache_memory_for_both_signatures(root, monkeypatch):
    """With the compiled engine prefill reads decode's cache arrays themselves (no second copy, no syncing), also
    after a growth re-binds them; logits as PyTorch's."""
    monkeypatch.setattr("liteship.runtime.generate.SLOT_STEP", 16)
    ref = np.load(root / "gpt2.reference.npz")
    seq = list(ref["prompt"]) + list(ref["continuation"])
    s = KVCacheSession(root / "gpt2-fp32", engine="compiled")

    def shared():
        tensors = s.tensors()
        names = [f"{kv}_{l}" for kv in "kv" for l in range(s.n_layer)]
        return all(tensors["decode"][n] is tensors["prefill"][n] for n in names)

    assert shared() and s.prefill_slots == s.slots == 16
    got = [s.prefill(seq[:20])]  # grows to 32 slots before the chunk at 16
    assert s.slots == s.prefill_slots == 32 and shared()
    got += [s.decode(t)[None] for t in seq[20:36]]
    got.append(s.prefill(seq[36:60]))
    assert s.slots == 64 and shared()
    np.testing.assert_allclose(np.concatenate(got), ref["logits"][:60], atol=1e-4, rtol=0)  # fp32 tolerance


@needs_compiled
def test_cli_with_the_compiled_engine_prints_nothing_but_its_own_output(root, tmp_path):
    """LiteRT's environment logs INFO lines on stderr when created and when destroyed at exit; the CLI's stderr
    holds liteship's own lines only."""
    env = dict(__import__("os").environ, LITESHIP_CACHE=str(tmp_path / "cache"))
    env.pop("LITESHIP_VERBOSE", None)
    res = subprocess.run([sys.executable, "-m", "liteship.cli", "run", "gpt2", str(root / "gpt2-fp32"), "--prompt",
                          "hello", "--max-new-tokens", "3", "--stats"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "INFO" not in res.stderr and "WARNING" not in res.stderr, res.stderr
    assert "new tokens" in res.stderr and list((tmp_path / "cache" / "xnnpack").iterdir())


@needs_compiled
def test_a_growth_holds_one_old_layer_beside_the_new_cache(root, monkeypatch):
    """The compiled engine grows its cache one layer array at a time, freeing each old array once copied: at no
    point during a growth are more than the new cache and the old cache's remaining layers alive (2L arrays,
    plus the one being made). Re-allocating the whole cache before dropping the old one held 4L (at 768 -> 896
    slots of GPT-2 124M, +54 MiB of peak RSS). Logits stay PyTorch's through the growths."""
    import weakref

    import liteship.runtime.generate as g

    monkeypatch.setattr(g, "SLOT_STEP", 16)
    made, most = [], [0]
    real = g._mapped

    def counted(shape, dtype):
        most[0] = max(most[0], sum(r() is not None for r in made) + 1)
        a = real(shape, dtype)
        made.append(weakref.ref(a))
        return a

    monkeypatch.setattr(g, "_mapped", counted)
    ref = np.load(root / "gpt2.reference.npz")
    seq = list(ref["prompt"]) + list(ref["continuation"])
    s = KVCacheSession(root / "gpt2-fp32", engine="compiled")
    L = s.n_layer
    assert len(made) == 2 * L and s.slots == 16
    most[0] = 0
    got = [s.prefill(seq[:40])] + [s.decode(t)[None] for t in seq[40:50]]  # 16 -> 32 -> 48 -> 64 slots
    assert s.slots == 64 and len(made) == 2 * L * 4
    assert most[0] == 2 * L + 1
    assert sum(r() is not None for r in made) == 2 * L  # the old caches are gone, not kept anywhere
    np.testing.assert_allclose(np.concatenate(got), ref["logits"][:50], atol=1e-4, rtol=0)  # fp32 tolerance


@pytest.mark.parametrize("engine", ["compiled", "interpreter"])
def test_chunked_prefill_equals_one_shot_prefill_across_chunk_and_slot_edges(root, monkeypatch, engine):
    """A prompt fed in pieces that end inside, on and across the 8-token chunks and the 16-slot cache steps
    (1, 7, 8, 9, 15, 16, 17 ...) gives the same logits as one prefill of the whole prompt and as PyTorch, and
    greedy generation after either continues with the same tokens."""
    if engine == "compiled" and not compiled_available():
        pytest.skip("needs ai-edge-litert 2.x (CompiledModel)")
    monkeypatch.setattr("liteship.runtime.generate.SLOT_STEP", 16)
    ref = np.load(root / "gpt2.reference.npz")
    seq = list(ref["prompt"]) + list(ref["continuation"])[:30]
    s = KVCacheSession(root / "gpt2-fp32", engine=engine)
    whole = s.prefill(seq)
    after_whole = [int(np.argmax(whole[-1]))]
    for _ in range(5):
        after_whole.append(int(np.argmax(s.decode(after_whole[-1]))))
    s.reset()
    pieces, start = [], 0
    for n in (1, 6, 1, 1, 7, 1, 1, 15, 9):  # ends at 1, 7, 8, 9, 16, 17, 18, 33, 42
        pieces.append(s.prefill(seq[start:start + n]))
        start += n
    pieces.append(s.prefill(seq[start:]))
    chunked = np.concatenate(pieces)
    np.testing.assert_allclose(chunked, whole, atol=1e-5, rtol=0)
    np.testing.assert_allclose(chunked, ref["logits"][:len(seq)], atol=1e-4, rtol=0)  # the fp32 export test's
    after_chunked = [int(np.argmax(chunked[-1]))]
    for _ in range(5):
        after_chunked.append(int(np.argmax(s.decode(after_chunked[-1]))))
    assert after_chunked == after_whole


@pytest.mark.parametrize("engine", ["compiled", "interpreter"])
def test_prefill_chunk_shrinks_at_long_context_and_changes_no_logit(root, monkeypatch, engine):
    """Prefill's chunk length T is open in the graph: the runtime halves it, as the cache it attends to grows,
    until a chunk's [H, T, S + T] scores are no larger than a full first chunk's. Whatever the chunks (the rule's,
    or fixed at 1, 3 or P), the logits are PyTorch's and the greedy tokens those of transformers' generate."""
    if engine == "compiled" and not compiled_available():
        pytest.skip("needs ai-edge-litert 2.x (CompiledModel)")
    monkeypatch.setattr("liteship.runtime.generate.SLOT_STEP", 16)
    monkeypatch.setattr("liteship.runtime.generate.MIN_CHUNK", 2)
    ref = np.load(root / "gpt2.reference.npz")
    seq = list(ref["prompt"]) + list(ref["continuation"])  # 60 tokens: the prompt, then PyTorch's greedy tokens
    s = KVCacheSession(root / "gpt2-fp32", engine=engine)
    P = s.prefill_len  # 8, C = 64: a first chunk's scores are [H, 8, 16 + 8]
    lengths = [s.chunk_length(start) for start in range(60)]
    assert lengths[0] == P and lengths[16] == 4 and lengths[59] == 2, lengths
    for start, T in enumerate(lengths):
        within = T * (s._slots_holding(start + T) + T) <= P * (16 + P)
        assert within or T == 2, (start, T)
        assert T == P or T * 2 * (s._slots_holding(start + 2 * T) + 2 * T) > P * (16 + P)  # the largest that fits

    used = []
    original = s._resize_prefill
    monkeypatch.setattr(s, "_resize_prefill", lambda slots, rows, T, **kw: (used.append(T), original(slots, rows,
                                                                                                    T, **kw))[1])
    got = s.prefill(seq[:60])
    assert set(used) == {8, 4, 2}, used  # the rule's chunks ran, each its own shape
    np.testing.assert_allclose(got, ref["logits"][:60], atol=1e-4, rtol=0)  # the fp32 export test's tolerance
    for fixed in (1, 3, P):
        other = KVCacheSession(root / "gpt2-fp32", engine=engine, prefill_chunk=fixed)
        np.testing.assert_allclose(other.prefill(seq[:60]), got, atol=1e-4, rtol=0)  # sum order: 2e-5 on tflite-runtime
        assert other.prefill_T == fixed
    gen = TextGenerator(root / "gpt2-fp32")
    assert list(gen.generate_ids(seq[:50], 10, temperature=0, stop_on_eos=False)) == seq[50:60]


def test_prefill_chunk_option_is_checked(root):
    with pytest.raises(RuntimeLiteshipError, match="prefill_chunk 9 must be between 1 and the bundle's prefill_len"):
        KVCacheSession(root / "gpt2-fp32", prefill_chunk=9)


FREED_BLOCKS = """
import ctypes, sys
from liteship.runtime.generate import KVCacheSession
if sys.argv[2] == "session":
    KVCacheSession(sys.argv[1])
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")) // 1024
libc.free(libc.malloc(8 << 20))  # a large block freed: glibc's default then raises its map threshold above 1 MiB
before = rss()
blocks = [libc.malloc(1 << 20) for _ in range(41)]
for b in blocks:
    ctypes.memset(b, 1, 1 << 20)
for b in blocks[:-1]:  # the last stays: a live block above the others, so the heap cannot shrink past it
    libc.free(b)
print(rss() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not __import__("platform").libc_ver()[0] == "glibc",
                    reason="glibc's map threshold")
@pytest.mark.skipif(sys.maxsize < 2**32, reason="32-bit glibc never raises its map threshold above 512 KiB: 1 MiB "
                                               "blocks are always mapped, and freed ones leave at once")
def test_a_session_makes_freed_large_blocks_leave_the_process(root):
    """LiteRT re-plans prefill's arena at every new chunk shape; with glibc's moving map threshold those arenas
    came from the heap and stayed resident after being freed (+8 MiB at 896 tokens at 124M). A session fixes the
    threshold (128 KiB while LiteRT plans, 1 MiB between steps): 40 MiB of 1 MiB blocks, freed, leave the process
    (without a session they stay)."""
    def grown(mode):
        out = subprocess.run([sys.executable, "-c", FREED_BLOCKS, str(root / "gpt2-fp32"), mode], capture_output=True,
                             text=True, check=True).stdout
        return int(out.split()[-1])

    assert grown("bare") >= 30  # the pattern itself keeps them: the test can fail
    assert grown("session") <= 5
