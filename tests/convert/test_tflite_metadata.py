"""The metadata writer: what it embeds reads back (with our reader and LiteRT's generated schema), the model still
runs the same, and a failure leaves nothing behind."""

from __future__ import annotations

import numpy as np
import pytest

from liteship.convert.tflite_metadata import embed_metadata
from liteship.errors import BundleError
from liteship.runtime.interpreter import create_interpreter
from liteship.runtime.tflite_file import read_model


@pytest.fixture(scope="module")
def model_path(fixture_bundles):
    return fixture_bundles / "classifier-fp32" / "model.tflite"


def test_embedded_metadata_round_trips_and_model_still_runs(model_path, tmp_path):
    out = tmp_path / "with-md.tflite"
    embed_metadata(model_path, out, {"a": b"first", "blob": bytes(range(256)) * 3})
    embed_metadata(out, out, {"a": b"second"})  # replace in place
    info = read_model(out)
    assert info.metadata["a"] == b"second"
    assert info.metadata["blob"] == bytes(range(256)) * 3
    assert info.op_counts() == read_model(model_path).op_counts()
    x = np.random.default_rng(1).uniform(size=(1, 12, 12, 3)).astype(np.float32)
    outputs = []
    for path in (model_path, out):
        runner = create_interpreter(path).get_signature_runner()
        outputs.append(next(iter(runner(image=x).values())))
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_official_schema_reads_what_we_embed(model_path, tmp_path):
    """LiteRT's generated flatbuffer code (an independent reader) finds our metadata."""
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    out = tmp_path / "m.tflite"
    embed_metadata(model_path, out, {"liteship.test": b'{"k": 1}'})
    model = schema.Model.GetRootAsModel(out.read_bytes(), 0)
    names = {model.Metadata(i).Name().decode(): model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
    buf = model.Buffers(names["liteship.test"])
    assert bytes(buf.DataAsNumpy()) == b'{"k": 1}'
    # Every weight buffer moves by the same multiple of 64 bytes, so whatever alignment the converter gave it
    # (XNNPACK and mmap'd weights care) is kept.
    before = schema.Model.GetRootAsModel(model_path.read_bytes(), 0)
    raw = out.read_bytes()

    def data_start(m, i):
        b = m.Buffers(i)
        return b._tab.Vector(b._tab.Offset(4)) if b.DataLength() else None

    shifts = {data_start(model, i) - data_start(before, i)
              for i in range(before.BuffersLength()) if data_start(before, i) is not None}
    assert len(shifts) == 1 and shifts.pop() % 64 == 0
    assert raw[4:8] == b"TFL3"


def test_failed_embed_leaves_no_partial_file(tmp_path, model_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(model_path.read_bytes()[:200])
    with pytest.raises(BundleError):
        embed_metadata(bad, tmp_path / "out.tflite", {"a": b"x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tflite"]


def test_added_external_buffer_takes_a_weight_and_the_interpreter_reads_it(model_path, tmp_path):
    """embed_metadata(new_buffers=...) adds a zero-filled buffer after the file's end at a 64-bit offset, and
    set_tensor_buffers points a weight at it: the interpreter then sees that weight's bytes there (copying the
    weight into it gives the same outputs; leaving it zero changes them). The GPT-2 weight writer relies on both."""
    from liteship.convert.tflite_metadata import set_tensor_buffers

    info = read_model(model_path)
    index, tensor = max(((i, t) for i, t in enumerate(info.subgraphs[0].tensors) if info.tensor_extent(0, i)),
                        key=lambda it: info.tensor_extent(0, it[0])[1])  # the largest constant
    offset, length = info.tensor_extent(0, index)
    out = tmp_path / "more.tflite"
    (new,) = embed_metadata(model_path, out, {"a": b"x"}, new_buffers=[length])
    set_tensor_buffers(out, {(0, index): new})
    moved = read_model(out)
    new_offset, new_length = moved.tensor_extent(0, index)
    assert moved.subgraphs[0].tensors[index].buffer == new and new_length == length
    assert new_offset >= model_path.stat().st_size and new_offset % 64 == 0  # after the old file's bytes
    assert moved.metadata["a"] == b"x"
    x = np.random.default_rng(1).uniform(size=(1, 12, 12, 3)).astype(np.float32)

    def run(path):
        return next(iter(create_interpreter(path).get_signature_runner()(image=x).values()))

    zeroed = run(out)
    with open(model_path, "rb") as src, open(out, "r+b") as dst:
        src.seek(offset)
        dst.seek(new_offset)
        dst.write(src.read(length))
    np.testing.assert_array_equal(run(out), run(model_path))
    assert not np.array_equal(zeroed, run(model_path)), f"zeroing {tensor.name} changed nothing: a useless check"
