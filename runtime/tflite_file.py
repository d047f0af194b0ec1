"""Read a .tflite flatbuffer in pure Python (no TensorFlow, no flatbuffers package).

A device must be able to say what a lone .tflite is, and tflite-runtime boards have no generated schema module, so
this reads the parts liteship needs (signatures, tensors, operator codes, the metadata table) straight from the
bytes, through an mmap so a 500 MB model is not loaded. The writer that embeds metadata is
liteship.convert.tflite_metadata (only conversion writes models).

Field slots follow TensorFlow Lite's schema.fbs (the numbers are vtable slots, in declaration order).
"""
from __future__ import annotations

import array
import json
import mmap
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from liteship.errors import BundleError
from liteship.runtime._schema_names import BUILTIN_OPERATORS, TENSOR_TYPES

FILE_IDENTIFIER = b"TFL3"
MANIFEST_METADATA_NAME = "liteship.manifest"
MIN_RUNTIME_METADATA_NAME = "min_runtime_version"  # written by the TFLite converter

# schema.fbs vtable slots
MODEL_VERSION, MODEL_OPERATOR_CODES, MODEL_SUBGRAPHS, MODEL_DESCRIPTION, MODEL_BUFFERS = 0, 1, 2, 3, 4
MODEL_METADATA, MODEL_SIGNATURE_DEFS = 6, 7
OPCODE_DEPRECATED_BUILTIN, OPCODE_CUSTOM, OPCODE_VERSION, OPCODE_BUILTIN = 0, 1, 2, 3
SUBGRAPH_TENSORS, SUBGRAPH_INPUTS, SUBGRAPH_OUTPUTS, SUBGRAPH_OPERATORS, SUBGRAPH_NAME = 0, 1, 2, 3, 4
TENSOR_SHAPE, TENSOR_TYPE, TENSOR_BUFFER, TENSOR_NAME, TENSOR_QUANTIZATION = 0, 1, 2, 3, 4
TENSOR_SHAPE_SIGNATURE = 7
QUANT_SCALE, QUANT_ZERO_POINT, QUANT_DIMENSION = 2, 3, 6
OPERATOR_OPCODE_INDEX, OPERATOR_INPUTS, OPERATOR_OUTPUTS = 0, 1, 2
BUFFER_DATA, BUFFER_OFFSET, BUFFER_SIZE = 0, 1, 2
METADATA_NAME, METADATA_BUFFER = 0, 1
TENSORMAP_NAME, TENSORMAP_INDEX = 0, 1
SIGNATURE_INPUTS, SIGNATURE_OUTPUTS, SIGNATURE_KEY, SIGNATURE_SUBGRAPH = 0, 1, 2, 4


class Table:
    """A flatbuffer table at an absolute position in ``buf``."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf, pos: int):
        self.buf, self.pos = buf, pos

    def _vtable(self) -> int:
        return self.pos - struct.unpack_from("<i", self.buf, self.pos)[0]

    def field_pos(self, slot: int) -> int | None:
        vt = self._vtable()
        vt_size = struct.unpack_from("<H", self.buf, vt)[0]
        entry = 4 + 2 * slot
        if entry + 2 > vt_size:
            return None
        off = struct.unpack_from("<H", self.buf, vt + entry)[0]
        return self.pos + off if off else None

    def slots(self) -> int:
        return (struct.unpack_from("<H", self.buf, self._vtable())[0] - 4) // 2

    def scalar(self, slot: int, fmt: str, default=0):
        p = self.field_pos(slot)
        return default if p is None else struct.unpack_from("<" + fmt, self.buf, p)[0]

    def _deref(self, slot: int) -> int | None:
        p = self.field_pos(slot)
        return None if p is None else p + struct.unpack_from("<I", self.buf, p)[0]

    def table(self, slot: int) -> "Table | None":
        p = self._deref(slot)
        return None if p is None else Table(self.buf, p)

    def string(self, slot: int) -> str | None:
        p = self._deref(slot)
        if p is None:
            return None
        n = struct.unpack_from("<I", self.buf, p)[0]
        return bytes(self.buf[p + 4 : p + 4 + n]).decode("utf-8", "replace")

    def vector(self, slot: int) -> tuple[int, int]:
        """(start of elements, length); (0, 0) when absent."""
        p = self._deref(slot)
        return (0, 0) if p is None else (p + 4, struct.unpack_from("<I", self.buf, p)[0])

    def scalars(self, slot: int, fmt: str) -> list:
        start, n = self.vector(slot)
        return list(struct.unpack_from(f"<{n}{fmt}", self.buf, start)) if n else []

    def array(self, slot: int, typecode: str) -> array.array:
        """A vector of numbers as one compact array.array (4 or 8 bytes each), not a list of Python objects: a
        124M GPT-2 has 266k quantization scales, which as floats left ~6 MiB behind in the runtime's process."""
        start, n = self.vector(slot)
        values = array.array(typecode)
        values.frombytes(bytes(self.buf[start:start + n * values.itemsize]))
        if sys.byteorder == "big":  # flatbuffers are little-endian
            values.byteswap()
        return values

    def tables(self, slot: int) -> list["Table"]:
        start, n = self.vector(slot)
        out = []
        for i in range(n):
            elem = start + 4 * i
            out.append(Table(self.buf, elem + struct.unpack_from("<I", self.buf, elem)[0]))
        return out


@dataclass
class TensorInfo:
    index: int
    name: str
    shape: list[int]
    dtype: str  # numpy name, or the TFLite type name where numpy has none
    buffer: int
    scale: "Sequence[float]" = field(default_factory=list)  # an array.array when read from a file (Table.array)
    zero_point: "Sequence[int]" = field(default_factory=list)
    quantized_dimension: int = 0
    scale_at: int = 0  # position of the first float32 of ``scale`` in the file (0: no scales); a writer patches it

    def spec(self) -> dict:
        quant = None
        if len(self.scale) == 1:
            quant = {"scale": float(self.scale[0]), "zero_point": int(self.zero_point[0]) if self.zero_point else 0}
        elif self.scale:
            quant = {"scale": [float(s) for s in self.scale], "zero_point": [int(z) for z in self.zero_point]}
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "quantization": quant}


@dataclass
class SubgraphInfo:
    name: str
    tensors: list[TensorInfo]
    inputs: list[int]
    outputs: list[int]
    op_codes: list[int]  # index into TFLiteModel.operator_names, one per operator
    op_inputs: list[list[int]] = field(default_factory=list)  # tensor indices per operator (-1: optional, absent)
    op_outputs: list[list[int]] = field(default_factory=list)


@dataclass
class SignatureInfo:
    key: str
    subgraph: int
    inputs: dict[str, int]   # signature name -> tensor index
    outputs: dict[str, int]


@dataclass
class TFLiteModel:
    size_bytes: int
    version: int
    description: str
    operator_names: list[str]
    subgraphs: list[SubgraphInfo]
    signatures: list[SignatureInfo]
    metadata: dict[str, bytes]
    buffer_extents: list[tuple[int, int]] = field(default_factory=list)  # (file offset, length) per buffer
    operator_versions: list[int] = field(default_factory=list)  # per operator code, as operator_names

    def producer(self, subgraph: int, tensor: int) -> tuple[str, list[int]] | None:
        """(operator name, input tensor indices) of the operator whose output is ``tensor``; None for a model
        input or a constant."""
        sg = self.subgraphs[subgraph]
        for code, inputs, outputs in zip(sg.op_codes, sg.op_inputs, sg.op_outputs):
            if tensor in outputs:
                return self.operator_names[code], inputs
        return None

    def tensor_extent(self, subgraph: int, tensor: int) -> tuple[int, int] | None:
        """(file offset, length) of a constant tensor's data; None for a tensor without data."""
        buffer = self.subgraphs[subgraph].tensors[tensor].buffer
        if 0 < buffer < len(self.buffer_extents) and self.buffer_extents[buffer][1]:
            return self.buffer_extents[buffer]
        return None

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for sg in self.subgraphs:
            for code in sg.op_codes:
                name = self.operator_names[code]
                counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def signature_specs(self) -> dict[str, dict]:
        """{signature key: {"inputs": [TensorSpec], "outputs": [TensorSpec]}}, in the signature's own names.

        A model without signature defs gets one called "serving_default" from subgraph 0's inputs and outputs."""
        specs = {}
        for sig in self.signatures:
            tensors = self.subgraphs[sig.subgraph].tensors
            specs[sig.key] = {
                "inputs": [dict(tensors[i].spec(), name=n) for n, i in sorted(sig.inputs.items())],
                "outputs": [dict(tensors[i].spec(), name=n) for n, i in sorted(sig.outputs.items())],
            }
        if not specs and self.subgraphs:
            sg = self.subgraphs[0]
            specs["serving_default"] = {
                "inputs": [sg.tensors[i].spec() for i in sg.inputs],
                "outputs": [sg.tensors[i].spec() for i in sg.outputs],
            }
        return specs

    def newest_op_versions(self, count: int = 3) -> list[tuple[str, int]]:
        """The ``count`` operators with the highest versions (above 1), highest first: what makes a runtime too
        old, as (name, version)."""
        pairs = sorted({(v, n) for n, v in zip(self.operator_names, self.operator_versions) if v > 1}, reverse=True)
        return [(name, version) for version, name in pairs[:count]]

    def min_runtime_version(self) -> str | None:
        """The oldest TFLite runtime that supports every op version in the file, as the converter recorded it
        (metadata ``min_runtime_version``: a NUL-padded string such as ``2.17.0``), or None if it did not."""
        raw = self.metadata.get(MIN_RUNTIME_METADATA_NAME)
        if raw is None:
            return None
        text = raw.split(b"\0", 1)[0].decode("ascii", "replace").strip()
        return text or None

    def manifest(self) -> dict | None:
        raw = self.metadata.get(MANIFEST_METADATA_NAME)
        if raw is None:
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"embedded {MANIFEST_METADATA_NAME} metadata is not valid JSON: {exc}") from None


def check_header(buf, size: int, label: str) -> int:
    if size < 16:
        raise BundleError(f"{label}: not a TFLite model ({size} bytes is too small)")
    if bytes(buf[4:8]) != FILE_IDENTIFIER:
        raise BundleError(f"{label}: not a TFLite model (no 'TFL3' file identifier)")
    root = struct.unpack_from("<I", buf, 0)[0]
    if root + 4 > size:
        raise BundleError(f"{label}: truncated TFLite model (root table beyond the end of the file)")
    return root


def _buffer_bytes(buf, size: int, table: Table, label: str) -> bytes:
    offset = table.scalar(BUFFER_OFFSET, "Q", 0)
    if offset > 1:
        length = table.scalar(BUFFER_SIZE, "Q", 0)
        if offset + length > size:
            raise BundleError(f"{label}: truncated TFLite model (a buffer ends past the end of the file)")
        return bytes(buf[offset : offset + length])
    start, n = table.vector(BUFFER_DATA)
    if start + n > size:
        raise BundleError(f"{label}: truncated TFLite model (a buffer ends past the end of the file)")
    return bytes(buf[start : start + n])


def _parse(buf, size: int, label: str) -> TFLiteModel:
    model = Table(buf, check_header(buf, size, label))
    op_names, op_versions = [], []
    for oc in model.tables(MODEL_OPERATOR_CODES):
        op_versions.append(oc.scalar(OPCODE_VERSION, "i", 1))
        code = max(oc.scalar(OPCODE_DEPRECATED_BUILTIN, "b", 0), oc.scalar(OPCODE_BUILTIN, "i", 0))
        name = BUILTIN_OPERATORS.get(code, f"BUILTIN_{code}")
        if name == "CUSTOM":
            name = f"CUSTOM:{oc.string(OPCODE_CUSTOM) or '?'}"
        op_names.append(name)
    subgraphs = []
    for sg in model.tables(MODEL_SUBGRAPHS):
        operators = sg.tables(SUBGRAPH_OPERATORS)
        tensors = []
        for i, t in enumerate(sg.tables(SUBGRAPH_TENSORS)):
            tflite_type, np_name = TENSOR_TYPES.get(t.scalar(TENSOR_TYPE, "b", 0), ("UNKNOWN", ""))
            shape_sig = t.scalars(TENSOR_SHAPE_SIGNATURE, "i")
            q = t.table(TENSOR_QUANTIZATION)
            tensors.append(TensorInfo(
                index=i,
                name=t.string(TENSOR_NAME) or "",
                shape=shape_sig or t.scalars(TENSOR_SHAPE, "i"),
                dtype=np_name or tflite_type,
                buffer=t.scalar(TENSOR_BUFFER, "I", 0),
                scale=q.array(QUANT_SCALE, "f") if q else [],
                zero_point=q.array(QUANT_ZERO_POINT, "q") if q else [],
                quantized_dimension=q.scalar(QUANT_DIMENSION, "i", 0) if q else 0,
                scale_at=q.vector(QUANT_SCALE)[0] if q else 0,
            ))
        subgraphs.append(SubgraphInfo(
            name=sg.string(SUBGRAPH_NAME) or "",
            tensors=tensors,
            inputs=sg.scalars(SUBGRAPH_INPUTS, "i"),
            outputs=sg.scalars(SUBGRAPH_OUTPUTS, "i"),
            op_codes=[op.scalar(OPERATOR_OPCODE_INDEX, "I", 0) for op in operators],
            op_inputs=[op.scalars(OPERATOR_INPUTS, "i") for op in operators],
            op_outputs=[op.scalars(OPERATOR_OUTPUTS, "i") for op in operators],
        ))
    signatures = []
    for sd in model.tables(MODEL_SIGNATURE_DEFS):
        signatures.append(SignatureInfo(
            key=sd.string(SIGNATURE_KEY) or "",
            subgraph=sd.scalar(SIGNATURE_SUBGRAPH, "I", 0),
            inputs={m.string(TENSORMAP_NAME): m.scalar(TENSORMAP_INDEX, "I", 0) for m in sd.tables(SIGNATURE_INPUTS)},
            outputs={m.string(TENSORMAP_NAME): m.scalar(TENSORMAP_INDEX, "I", 0) for m in sd.tables(SIGNATURE_OUTPUTS)},
        ))
    buffers = model.tables(MODEL_BUFFERS)
    extents = []
    for b in buffers:  # a cut-off file usually loses weights at the end: check every buffer's extent
        offset = b.scalar(BUFFER_OFFSET, "Q", 0)
        start, n = (offset, b.scalar(BUFFER_SIZE, "Q", 0)) if offset > 1 else b.vector(BUFFER_DATA)
        if start + n > size:
            raise BundleError(f"{label}: truncated TFLite model (a weight buffer ends past the end of the file)")
        extents.append((start, n))
    metadata = {}
    for md in model.tables(MODEL_METADATA):
        index = md.scalar(METADATA_BUFFER, "I", 0)
        if index < len(buffers):
            metadata[md.string(METADATA_NAME) or ""] = _buffer_bytes(buf, size, buffers[index], label)
    return TFLiteModel(
        size_bytes=size,
        version=model.scalar(MODEL_VERSION, "I", 0),
        description=model.string(MODEL_DESCRIPTION) or "",
        operator_names=op_names,
        subgraphs=subgraphs,
        signatures=signatures,
        metadata=metadata,
        buffer_extents=extents,
        operator_versions=op_versions,
    )


def read_model(source: str | os.PathLike | bytes) -> TFLiteModel:
    """Parse a .tflite (path or bytes). A truncated or foreign file raises BundleError, never a struct.error."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _parse_guarded(memoryview(source), len(source), "model")
    path = Path(source)
    if not path.is_file():
        raise BundleError(f"{path}: no such model file")
    size = path.stat().st_size
    if size < 16:
        raise BundleError(f"{path}: not a TFLite model ({size} bytes is too small)")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return _parse_guarded(mm, size, str(path))


def _parse_guarded(buf, size: int, label: str) -> TFLiteModel:
    try:
        return _parse(buf, size, label)
    except BundleError:
        raise
    except (struct.error, IndexError, ValueError, OverflowError):
        raise BundleError(f"{label}: truncated or corrupt TFLite model (its tables point outside the {size}-byte file)") \
            from None
