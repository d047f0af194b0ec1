"""What makes gpt2-xl convert on a 24 GB machine, tested on tiny models: placeholders for the
matrices with the real weights written in afterwards (convert/gpt2/weight_writer.py), and the .tflite layout that
keeps weights after the flatbuffer at 64-bit offsets (forced here on a tiny model), read by every command."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from liteship.convert.gpt2.config import tiny
from tests.gpt2_fixtures import liteship_run, make_checkpoint, torch_greedy, torch_logits

pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

OPTIONS = {"max_context": 32, "prefill_len": 8}
PROMPT = [5, 77, 200, 13, 42, 256, 7, 99, 150, 3]
NEW_TOKENS = 16
CFG = tiny(n_head=3, n_embd=36, vocab_size=301, bos_token_id=300, eos_token_id=300)  # odd sizes: head size 12,
# a vocabulary no multiple of 8


def checkpoint(tmp_path):
    """Trained-like weights (random LayerNorms, non-zero biases) plus one all-zero token row: a zero channel
    must get the converter's own int8 scale from the weight writer too."""
    model = make_checkpoint(tmp_path / "ckpt", CFG)
    with torch.no_grad():
        model.transformer.wte.weight[17] = 0.0
    model.save_pretrained(tmp_path / "ckpt")
    return model


def export_real_weights(monkeypatch, *args, **kwargs):
    """Export as before placeholders: a converter that rewrites a placeholder sends export down this path."""
    from liteship.convert.gpt2 import export as E
    from liteship.convert.gpt2.weight_writer import PlaceholderMismatch

    def refuse(*a, **k):
        raise PlaceholderMismatch("forced by the test")

    messages = []
    with monkeypatch.context() as m:
        m.setattr(E, "convert_with_placeholders", refuse)
        E.export(*args, progress=messages.append, **kwargs)
    assert any("converting with the real weights" in msg for msg in messages)


def whole(table) -> np.ndarray:
    """Every value of a token table (or its scales), however the runtime holds it: an array, or a file it reads
    row by row."""
    if isinstance(table, np.ndarray):
        return table
    if table.ndim == 2:
        return table[np.arange(table.shape[0])]
    return table[np.arange(table.shape[0])[None]][0]


@pytest.mark.parametrize("quant", ["fp32", "fp16", "dynamic-int8"])
def test_placeholder_conversion_equals_the_real_weight_conversion(tmp_path, monkeypatch, quant):
    """The bundle made with placeholders holds what the converter makes of the real weights: the same token
    table (int8: the same bytes and per-row scales, the zero row included) and the same logits up to float32
    summation order (the LayerNorm fold is computed by export instead of the converter)."""
    from liteship.convert.gpt2.export import export
    from liteship.runtime.bundle import Bundle
    from liteship.runtime.token_table import TokenTable

    checkpoint(tmp_path)
    export(tmp_path / "ckpt", tmp_path / "new", quant=quant, **OPTIONS)
    export_real_weights(monkeypatch, tmp_path / "ckpt", tmp_path / "old", quant=quant, **OPTIONS)
    new, old = (TokenTable.from_bundle(Bundle.open(tmp_path / n)) for n in ("new", "old"))
    np.testing.assert_array_equal(whole(new.table), whole(old.table))
    if quant == "dynamic-int8":
        np.testing.assert_array_equal(whole(new.scales), whole(old.scales))
    _, got, _ = liteship_run(tmp_path / "new", PROMPT, NEW_TOKENS)
    _, want, _ = liteship_run(tmp_path / "old", PROMPT, NEW_TOKENS)
    # fp32: summation order only. Quantized: int8/fp16 rounding of weights that differ by that order can flip
    # one level, so the bound is the rounding's own scale (well under test_gpt2_export's bounds against PyTorch).
    tolerance = {"fp32": 1e-4, "fp16": 1e-2, "dynamic-int8": 0.05}[quant] * max(1.0, np.abs(want).max())
    assert np.abs(got - want).max() <= tolerance


@pytest.fixture(scope="module")
def offset_bundles(tmp_path_factory):
    """Tiny bundles whose weights sit after the flatbuffer at 64-bit offsets, the layout export uses from 1 GiB
    of weights (forced here by lowering that threshold), plus the torch model they came from."""
    from liteship.convert.gpt2 import export as E

    root = tmp_path_factory.mktemp("offsets")
    model = checkpoint(root)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(E, "OFFSETS_FROM_BYTES", 0)
        for quant in ("fp32", "dynamic-int8"):
            E.export(root / "ckpt", root / f"b-{quant}", quant=quant, **OPTIONS)
    return root, model


def weights_after_flatbuffer(path) -> bool:
    """Every tensor's data lies after the flatbuffer (the converter's buffer-offset layout), read from the file's
    own Buffer tables: an offset > 1 marks an external buffer, inline data does not have one."""
    from liteship.runtime import tflite_file as T

    data = path.read_bytes()
    buffers = T.Table(data, T.check_header(data, len(data), str(path))).tables(T.MODEL_BUFFERS)
    info = T.read_model(path)
    used = {t.buffer for sg in info.subgraphs for t in sg.tensors if t.buffer and info.buffer_extents[t.buffer][1]}
    return len(used) > 10 and all(buffers[b].scalar(T.BUFFER_OFFSET, "Q", 0) > 1 for b in used)


@pytest.mark.parametrize("quant", ["fp32", "dynamic-int8"])
def test_offset_layout_bundle_matches_transformers(offset_bundles, quant):
    from liteship.runtime import tflite_file as T

    root, model = offset_bundles
    path = root / f"b-{quant}" / "model.tflite"
    info = T.read_model(path)
    assert "buffer_location" in info.metadata and info.manifest()["quantization"] == quant
    assert weights_after_flatbuffer(path)
    want_tokens = torch_greedy(model, PROMPT, NEW_TOKENS)
    _, got, tokens = liteship_run(root / f"b-{quant}", PROMPT, NEW_TOKENS)
    want = torch_logits(model, PROMPT + tokens)[:-1]
    if quant == "fp32":
        assert tokens == want_tokens
        assert np.abs(got - want).max() <= 1e-4
    else:  # test_gpt2_export's stated dynamic-int8 bounds
        assert np.abs(got - want).max() <= 0.25 * np.abs(want).max()


def test_offset_layout_bundle_works_in_inspect_bench_and_a_zip64_pack(offset_bundles, tmp_path, monkeypatch):
    """inspect and bench read the offset layout; pack writes ZIP64 records once a member passes the zip limit
    (lowered here so a tiny bundle takes that path), and the packed bundle opens, verifies and runs."""
    from liteship.runtime.bench import benchmark
    from liteship.runtime.bundle import Bundle, pack_bundle

    root, _ = offset_bundles
    bundle = root / "b-dynamic-int8"
    out = subprocess.run([sys.executable, "-m", "liteship.cli", "inspect", str(bundle), "--json"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    inspected = json.loads(out.stdout)
    assert "prefill" in json.dumps(inspected) and "decode" in json.dumps(inspected)

    result = benchmark(bundle, runs=2, warmup=1, threads=1)
    assert result["generation"]["decode_tok_s"] > 0

    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1024)  # every member over 1 KiB is written with ZIP64 extra fields
    archive = pack_bundle(bundle, tmp_path / "b.zip")
    with zipfile.ZipFile(archive) as zf:
        model_info = next(i for i in zf.infolist() if i.filename.endswith("model.tflite"))
        assert model_info.extra[:2] == b"\x01\x00", "the model member has no ZIP64 extra field"
    monkeypatch.undo()
    opened = Bundle.open(archive)  # extracts and verifies every checksum
    _, got, _ = liteship_run(opened.root, PROMPT, 4)
    _, want, _ = liteship_run(bundle, PROMPT, 4)
    np.testing.assert_array_equal(got, want)
