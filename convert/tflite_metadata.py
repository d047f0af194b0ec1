"""Embed metadata in a .tflite file without re-serialising the model (pure Python, no TensorFlow).

Embedding metadata normally means re-serialising the whole model. Instead, ``embed_metadata`` *prepends* a new root
``Model`` table (plus new ``buffers`` and ``metadata`` vectors and the metadata bytes) and keeps every old byte after
it unchanged. Flatbuffer offsets are relative, so the old tables stay valid when shifted as a block; the prefix length
is a multiple of 64 so every weight buffer keeps its alignment. The old root table becomes unreferenced. Weights are
copied, never parsed, so this costs one file copy whatever the model size.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Mapping, Sequence

from liteship.errors import BundleError
from liteship.runtime.files import atomic_path
from liteship.runtime.tflite_file import (
    BUFFER_DATA,
    BUFFER_OFFSET,
    BUFFER_SIZE,
    FILE_IDENTIFIER,
    METADATA_BUFFER,
    METADATA_NAME,
    MODEL_BUFFERS,
    MODEL_METADATA,
    MODEL_SUBGRAPHS,
    MODEL_VERSION,
    SUBGRAPH_TENSORS,
    TENSOR_BUFFER,
    Table,
    check_header,
    read_model,
)

PREFIX_ALIGN = 64  # >= the 16-byte force_align of Buffer.data; keeps every old offset's alignment


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
        root = Table(mm, check_header(mm, size, str(path)))
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
        root = Table(mm, check_header(mm, size, str(src)))
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

        with atomic_path(dst, mkdir=True) as tmp, open(tmp, "wb") as out:
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
        return list(range(len(old_buffers) + len(names), len(old_buffers) + len(names) + len(new_buffers)))
