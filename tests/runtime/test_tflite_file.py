"""The TF-free .tflite reader, checked against the interpreter and against LiteRT's generated schema module."""

from __future__ import annotations

import json

import numpy as np
import pytest

from liteship.errors import BundleError
from liteship.runtime.interpreter import create_interpreter
from liteship.runtime.tflite_file import MANIFEST_METADATA_NAME, read_model


@pytest.fixture(scope="module")
def model_path(fixture_bundles):
    return fixture_bundles / "classifier-fp32" / "model.tflite"


def test_reads_signatures_ops_and_tensors(model_path):
    info = read_model(model_path)
    specs = info.signature_specs()
    assert list(specs) == ["serving_default"]
    (inp,) = specs["serving_default"]["inputs"]
    assert inp["shape"][1:] == [12, 12, 3] and inp["dtype"] == "float32"
    (out,) = specs["serving_default"]["outputs"]
    assert out["shape"][-1] == 5
    assert info.op_counts()["CONV_2D"] == 2
    assert "min_runtime_version" in info.metadata


def test_reader_agrees_with_the_interpreter(model_path):
    """Tensor names, shapes and types the reader reports are the ones the interpreter sees."""
    info = read_model(model_path)
    interp = create_interpreter(model_path)
    runner = interp.get_signature_runner("serving_default")
    for name, detail in runner.get_input_details().items():
        (spec,) = [s for s in info.signature_specs()["serving_default"]["inputs"] if s["name"] == name]
        assert spec["dtype"] == np.dtype(detail["dtype"]).name
        assert list(detail["shape_signature"]) == spec["shape"]


def test_quantization_parameters_are_read(fixture_bundles):
    interp = create_interpreter(fixture_bundles / "classifier-int8" / "model.tflite")
    interp.allocate_tensors()
    info = read_model(fixture_bundles / "classifier-int8" / "model.tflite")
    by_name = {t.name: t for t in info.subgraphs[0].tensors}
    checked = 0
    for d in interp.get_tensor_details():
        scales = d["quantization_parameters"]["scales"]
        if len(scales) and d["name"] in by_name:
            assert np.allclose(by_name[d["name"]].scale, scales)
            zero_points = d["quantization_parameters"]["zero_points"]
            assert list(by_name[d["name"]].zero_point) == list(zero_points)
            checked += 1
    assert checked > 3


def test_quantization_parameters_take_four_bytes_a_scale(fixture_bundles):
    """Scales are read as one compact buffer of float32 each, not a list of Python floats (32 bytes a value): GPT-2
    124M has 266k of them, and reading its model left ~6 MiB of freed floats in every runtime process (the token
    table reads the model). Zero points likewise, as the int64 the file stores."""
    info = read_model(fixture_bundles / "classifier-int8" / "model.tflite")
    quantized = [t for t in info.subgraphs[0].tensors if len(t.scale) > 1]
    assert quantized
    for t in quantized:
        assert memoryview(t.scale).format == "f" and memoryview(t.zero_point).itemsize == 8, t.name


def fixture_models(root):
    """Every model.tflite of the shared fixture bundles: the classifier in each quantization mode and GPT-2 (two
    signatures, prefill and decode, in their own subgraphs)."""
    return sorted(root.glob("*/model.tflite"))


def expected_dtype(type_name: str) -> str:
    """The reader's dtype for a TensorType name: numpy's name where numpy has the type, else the TFLite name."""
    if type_name == "STRING":
        return "object"
    try:
        return np.dtype(type_name.lower()).name
    except TypeError:
        return type_name


def generated_reading(path, schema) -> dict:
    """What LiteRT's generated schema module (an independent reader, with the flatbuffers package) finds in a file,
    in the reader's terms."""
    raw = path.read_bytes()
    model = schema.Model.GetRootAsModel(raw, 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    operators = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        name = op_names[max(oc.DeprecatedBuiltinCode(), oc.BuiltinCode())]
        operators.append(f"CUSTOM:{oc.CustomCode().decode()}" if name == "CUSTOM" else name)
    subgraphs = []
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        tensors = []
        for t in (sg.Tensors(i) for i in range(sg.TensorsLength())):
            q = t.Quantization()
            tensors.append({
                "name": t.Name().decode(),
                "shape": (t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength() else t.ShapeAsNumpy()).tolist()
                if t.ShapeSignatureLength() or t.ShapeLength() else [],
                "dtype": expected_dtype(type_names[t.Type()]),
                "buffer": t.Buffer(),
                "scale": q.ScaleAsNumpy().tolist() if q and q.ScaleLength() else [],
                "zero_point": q.ZeroPointAsNumpy().tolist() if q and q.ZeroPointLength() else [],
                "quantized_dimension": q.QuantizedDimension() if q else 0,
            })
        ops = [sg.Operators(i) for i in range(sg.OperatorsLength())]
        subgraphs.append({
            "name": (sg.Name() or b"").decode(),
            "tensors": tensors,
            "inputs": sg.InputsAsNumpy().tolist() if sg.InputsLength() else [],
            "outputs": sg.OutputsAsNumpy().tolist() if sg.OutputsLength() else [],
            "op_codes": [op.OpcodeIndex() for op in ops],
            "op_inputs": [op.InputsAsNumpy().tolist() if op.InputsLength() else [] for op in ops],
            "op_outputs": [op.OutputsAsNumpy().tolist() if op.OutputsLength() else [] for op in ops],
        })
    buffers = []
    for b in (model.Buffers(i) for i in range(model.BuffersLength())):
        data = raw[b.Offset():b.Offset() + b.Size()] if b.Offset() > 1 else (
            b.DataAsNumpy().tobytes() if b.DataLength() else b"")
        buffers.append(data)
    signatures = []
    for sd in (model.SignatureDefs(i) for i in range(model.SignatureDefsLength())):
        signatures.append({
            "key": sd.SignatureKey().decode(),
            "subgraph": sd.SubgraphIndex(),
            "inputs": {sd.Inputs(i).Name().decode(): sd.Inputs(i).TensorIndex() for i in range(sd.InputsLength())},
            "outputs": {sd.Outputs(i).Name().decode(): sd.Outputs(i).TensorIndex()
                        for i in range(sd.OutputsLength())},
        })
    metadata = {model.Metadata(i).Name().decode(): buffers[model.Metadata(i).Buffer()]
                for i in range(model.MetadataLength())}
    return {"version": model.Version(), "description": (model.Description() or b"").decode(),
            "operator_names": operators, "subgraphs": subgraphs, "signatures": signatures, "buffers": buffers,
            "metadata": metadata}


def test_reader_agrees_with_the_generated_schema_on_every_fixture_model(fixture_bundles):
    """Tensors, buffers, operators, signatures, quantization, metadata and min_runtime_version, field by field."""
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")  # not on tflite-runtime boards
    paths = fixture_models(fixture_bundles)
    assert {p.parent.name for p in paths} >= {"classifier-fp32", "classifier-int8", "classifier-int8x16", "gpt2-fp32"}
    for path in paths:
        want = generated_reading(path, schema)
        info = read_model(path)
        raw = path.read_bytes()
        got = {
            "version": info.version, "description": info.description, "operator_names": info.operator_names,
            "subgraphs": [{
                "name": sg.name,
                "tensors": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "buffer": t.buffer,
                             "scale": list(t.scale), "zero_point": list(t.zero_point),
                             "quantized_dimension": t.quantized_dimension} for t in sg.tensors],
                "inputs": sg.inputs, "outputs": sg.outputs, "op_codes": sg.op_codes,
                "op_inputs": sg.op_inputs, "op_outputs": sg.op_outputs,
            } for sg in info.subgraphs],
            "signatures": [{"key": s.key, "subgraph": s.subgraph, "inputs": s.inputs, "outputs": s.outputs}
                           for s in info.signatures],
            "buffers": [raw[start:start + n] for start, n in info.buffer_extents],
            "metadata": info.metadata,
        }
        for key in want:
            assert got[key] == want[key], f"{path.parent.name}: {key} differs from the generated schema's reading"
        if path.parent.name in ("classifier-int8", "classifier-int8x16", "classifier-fp32"):  # the scales compared
            assert any(t.scale for t in info.subgraphs[0].tensors) == (path.parent.name != "classifier-fp32"), path
        recorded = want["metadata"]["min_runtime_version"].split(b"\0", 1)[0].decode()
        assert info.min_runtime_version() == recorded and recorded, path


def test_bundle_model_carries_its_manifest(fixture_bundles):
    info = read_model(fixture_bundles / "classifier-int8" / "model.tflite")
    manifest = json.loads(info.metadata[MANIFEST_METADATA_NAME])
    assert manifest["quantization"] == "int8" and manifest["family"] == "classifier"
    assert "files" not in manifest  # a file cannot hold its own hash


@pytest.mark.parametrize("keep", [0, 10, 100, 0.5, 0.9])
def test_truncated_model_is_a_clear_error(model_path, tmp_path, keep):
    raw = model_path.read_bytes()
    n = int(len(raw) * keep) if isinstance(keep, float) else keep
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(raw[:n])
    with pytest.raises(BundleError, match="bad.tflite: (truncated|not a TFLite model)"):
        read_model(bad)


def test_foreign_file_is_not_a_model(tmp_path):
    bad = tmp_path / "notes.tflite"
    bad.write_text("this is a text file, not a flatbuffer" * 10)
    with pytest.raises(BundleError, match="no 'TFL3' file identifier"):
        read_model(bad)
