"""Read a .tflite flatbuffer, and embed metadata in one, in pure Python (no TensorFlow, no flatbuffers package).

A device must be able to say what a lone .tflite is, so this reads the parts liteship needs (signatures, tensors,
operator codes, the metadata table) straight from the bytes, through an mmap so a 500 MB model is not loaded.

Embedding metadata normally means re-serialising the whole model. Instead, ``embed_metadata`` *prepends* a new root
``Model`` table (plus new ``buffers`` and ``metadata`` vectors and the metadata bytes) and keeps every old byte after
it unchanged. Flatbuffer offsets are relative, so the old tables stay valid when shifted as a block; the prefix length
is a multiple of 64 so every weight buffer keeps its alignment. The old root table becomes unreferenced. Weights are
copied, never parsed, so this costs one file copy whatever the model size.

Field slots follow TensorFlow Lite's schema.fbs (the numbers are vtable slots, in declaration order).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

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

PREFIX_ALIGN = 64  # >= the 16-byte force_align of Buffer.data; keeps every old offset's alignment


class _Table:
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

    def table(self, slot: int) -> "_Table | None":
        p = self._deref(slot)
        return None if p is None else _Table(self.buf, p)

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

    def tables(self, slot: int) -> list["_Table"]:
        start, n = self.vector(slot)
        out = []
        for i in range(n):
            elem = start + 4 * i
            out.append(_Table(self.buf, elem + struct.unpack_from("<I", self.buf, elem)[0]))
        return out


@dataclass
class TensorInfo:
    index: int
    name: str
    shape: list[int]
    dtype: str  # numpy name, or the TFLite type name where numpy has none
    buffer: int
    scale: list[float] = field(default_factory=list)
    zero_point: list[int] = field(default_factory=list)
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


def _check_header(buf, size: int, label: str) -> int:
    if size < 16:
        raise BundleError(f"{label}: not a TFLite model ({size} bytes is too small)")
    if bytes(buf[4:8]) != FILE_IDENTIFIER:
        raise BundleError(f"{label}: not a TFLite model (no 'TFL3' file identifier)")
    root = struct.unpack_from("<I", buf, 0)[0]
    if root + 4 > size:
        raise BundleError(f"{label}: truncated TFLite model (root table beyond the end of the file)")
    return root


def _buffer_bytes(buf, size: int, table: _Table, label: str) -> bytes:
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
    model = _Table(buf, _check_header(buf, size, label))
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
                scale=q.scalars(QUANT_SCALE, "f") if q else [],
                zero_point=q.scalars(QUANT_ZERO_POINT, "q") if q else [],
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
    except (struct.error, IndexError, ValueError, OverflowError) as exc:
        raise BundleError(f"{label}: truncated or corrupt TFLite model (its tables point outside the {size}-byte file)") \
            from None


def read_manifest_from_tflite(path: str | os.PathLike) -> dict | None:
    return read_model(path).manifest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class _PrefixWriter:
    """Builds the prepended region; every reference in it points forward (flatbuffer uoffsets are unsigned)."""

    def __init__(self, base: int):
        self.base = base  # absolute file position of out[0]
        self.out = bytearray()
        self.patches: list[tuple[int, str]] = []  # (absolute field position, label of its target)
        self.labels: dict[str, int] = {}

    def pos(self) -> int:
        return self.base + len(self.out)

    def align(self, n: int, extra: int = 0) -> None:
        while (self.pos() + extra) % n:
            self.out.append(0)

    def put(self, fmt: str, *values) -> int:
        p = self.pos()
        self.out += struct.pack("<" + fmt, *values)
        return p

    def ref(self, label: str) -> None:
        """A uoffset to a label placed later in the prefix."""
        self.patches.append((self.put("I", 0), label))

    def ref_abs(self, target: int) -> None:
        """A uoffset to an absolute position after this one (in the shifted old model)."""
        p = self.pos()
        self.put("I", target - p)

    def mark(self, label: str) -> None:
        self.labels[label] = self.pos()

    def table(self, fields: list[tuple[int, str, object]]) -> int:
        """Writes a vtable and table. fields: (slot, kind, value) with kind "I" (uint32 scalar), "ref" (label),
        "abs" (absolute target), each 4 bytes, or "Q" (uint64 scalar; then every field must be "Q", and they sit on
        8-byte boundaries). Returns the table position."""
        nslots = max(slot for slot, _, _ in fields) + 1
        width = 8 if fields[0][1] == "Q" else 4
        self.align(2)
        vt = self.pos()
        table_size = 4 + width * len(fields)
        offsets = [0] * nslots
        for i, (slot, _, _) in enumerate(fields):
            offsets[slot] = 4 + width * i
        self.put(f"HH{nslots}H", 4 + 2 * nslots, table_size, *offsets)
        self.align(width, extra=4 if width == 8 else 0)  # 8-byte fields start 4 bytes after the table
        tpos = self.put("i", self.pos() - vt)
        for _, kind, value in fields:
            if kind == "Q":
                self.put("Q", value)
            elif kind == "I":
                self.put("I", value)
            elif kind == "ref":
                self.ref(value)
            else:
                self.ref_abs(value)
        return tpos

    def resolve(self) -> None:
        for at, label in self.patches:
            rel = at - self.base
            self.out[rel : rel + 4] = struct.pack("<I", self.labels[label] - at)


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def set_tensor_buffers(path: str | os.PathLike, buffers: Mapping[tuple[int, int], int]) -> None:
    """Points tensors ((subgraph, tensor) -> buffer index) at other buffers, in place: each tensor's buffer field
    is rewritten where it stands (a tensor with data always has that field)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "r+b") as fh, mmap.mmap(fh.fileno(), 0) as mm:
        root = _Table(mm, _check_header(mm, size, str(path)))
        subgraphs = root.tables(MODEL_SUBGRAPHS)
        for (sg, index), buffer in buffers.items():
            at = subgraphs[sg].tables(SUBGRAPH_TENSORS)[index].field_pos(TENSOR_BUFFER)
            if at is None:
                raise BundleError(f"{path}: tensor {index} of subgraph {sg} has no buffer field to point elsewhere")
            struct.pack_into("<I", mm, at, buffer)


def embed_metadata(src: str | os.PathLike, dst: str | os.PathLike, entries: Mapping[str, bytes], *,
                   new_buffers: Sequence[int] = ()) -> list[int]:
    """Writes ``dst``: the model ``src`` with metadata ``entries`` (name -> bytes) added or replaced.

    ``new_buffers``: sizes of further, zero-filled buffers to add after the file's end at 64-bit offsets (the
    layout of models over 2 GiB); returns their buffer indices, for tensors a writer then points at them.
    ``dst`` is written to a temporary name beside it and renamed when complete; ``src`` may equal ``dst``."""
    src, dst = Path(src), Path(dst)
    old = read_model(src)  # validates the file before we touch anything
    size = old.size_bytes
    with open(src, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        root = _Table(mm, _check_header(mm, size, str(src)))
        nslots = root.slots()
        old_buffers = root.tables(MODEL_BUFFERS)
        old_metadata = [m for m in root.tables(MODEL_METADATA) if m.string(METADATA_NAME) not in entries]
        external = [(b.field_pos(BUFFER_OFFSET), b.scalar(BUFFER_OFFSET, "Q", 0)) for b in old_buffers]
        external = [(p, v) for p, v in external if p is not None and v > 1]

        # Two passes: the first learns the prefix length P, the second writes with old positions shifted by P.
        prefix_len = None
        while True:
            w = _PrefixWriter(base=8)
            # Old position p becomes p + shift. The first pass only measures the prefix, with a stand-in shift
            # large enough that every reference still points forward.
            shift = (1 << 30) if prefix_len is None else prefix_len

            fields: list[tuple[int, str, object]] = []
            for slot in range(nslots):
                if slot == MODEL_BUFFERS:
                    fields.append((slot, "ref", "buffers"))
                elif slot == MODEL_METADATA:
                    fields.append((slot, "ref", "metadata"))
                elif root.field_pos(slot) is None:
                    continue
                elif slot == MODEL_VERSION:
                    fields.append((slot, "I", root.scalar(MODEL_VERSION, "I", 3)))
                else:  # every other Model field is a vector or string: a uoffset
                    fp = root.field_pos(slot)
                    fields.append((slot, "abs", fp + struct.unpack_from("<I", mm, fp)[0] + shift))
            if MODEL_METADATA >= nslots:
                fields.append((MODEL_METADATA, "ref", "metadata"))
            if MODEL_BUFFERS >= nslots:
                fields.append((MODEL_BUFFERS, "ref", "buffers"))
            fields.sort(key=lambda f: f[0])
            model_pos = w.table(fields)

            names = list(entries)
            w.align(4)
            w.mark("buffers")
            w.put("I", len(old_buffers) + len(names) + len(new_buffers))
            for b in old_buffers:
                w.ref_abs(b.pos + shift)
            for i in range(len(names)):
                w.ref(f"buf{i}")
            for i in range(len(new_buffers)):
                w.ref(f"new{i}")
            w.mark("metadata")
            w.put("I", len(old_metadata) + len(names))
            for m in old_metadata:
                w.ref_abs(m.pos + shift)
            for i in range(len(names)):
                w.ref(f"md{i}")
            for i, name in enumerate(names):
                w.labels[f"md{i}"] = w.table([(METADATA_NAME, "ref", f"name{i}"), (METADATA_BUFFER, "I", len(old_buffers) + i)])
            for i, name in enumerate(names):
                w.align(4)
                w.mark(f"name{i}")
                raw = name.encode("utf-8")
                w.put("I", len(raw))
                w.out += raw + b"\0"
            for i in range(len(names)):
                w.labels[f"buf{i}"] = w.table([(BUFFER_DATA, "ref", f"data{i}")])
            end = _round_up(size + shift, PREFIX_ALIGN)  # the new buffers follow the shifted old file
            placed = []
            for i, n in enumerate(new_buffers):
                placed.append(end)
                w.labels[f"new{i}"] = w.table([(BUFFER_OFFSET, "Q", end), (BUFFER_SIZE, "Q", n)])
                end = _round_up(end + n, PREFIX_ALIGN)
            for i, name in enumerate(names):
                w.align(16, extra=4)  # the bytes, not the length word, sit on a 16-byte boundary
                w.mark(f"data{i}")
                data = bytes(entries[name])
                w.put("I", len(data))
                w.out += data
            w.align(PREFIX_ALIGN, extra=-w.base)  # the shift is the prefix's length: make that the multiple
            if len(w.out) == prefix_len:
                break
            prefix_len = len(w.out)  # sizes do not depend on the shift, so the second pass ends the loop
        w.resolve()

        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(struct.pack("<I", model_pos) + FILE_IDENTIFIER)
                out.write(w.out)
                fh.seek(8)  # read, not sliced from the mapping: a 6 GB copy would stay resident in this process
                while block := fh.read(64 << 20):
                    out.write(block)
                # Large models keep weights outside the flatbuffer at absolute file offsets: shift them too.
                for field_at, value in external:
                    out.seek(field_at + prefix_len)
                    out.write(struct.pack("<Q", value + prefix_len))
                if new_buffers:
                    out.truncate(placed[-1] + new_buffers[-1])  # zeros, without writing them
            os.replace(tmp, dst)
            return list(range(len(old_buffers) + len(names), len(old_buffers) + len(names) + len(new_buffers)))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
