"""Writes GPT-2's large matrices into a .tflite converted with placeholders in their place.

Why: the TFLite converter holds every constant of the graph several times over while it converts (a 1.4 GB
gpt2-medium took 4.5x its weights; gpt2-xl would not fit in 24 GB). export.py therefore converts a graph whose
matrices are placeholders: each a constant of the real shape filled with one value of its own (model.py), which
TensorFlow and MLIR keep as a single number until the flatbuffer is written (placeholder_values has the one
exception, small int8 models). Every choice the converter makes
(ops, fusions, the fp16 copy, per-channel int8) is made as for real weights; only the bytes are missing. This module
finds each placeholder in the converted file, checks the converter left it untouched (every element still its
value: nothing was folded into it), and writes the checkpoint's matrix there, encoded as the converter encoded
the placeholder (float32, float16, or int8 with one symmetric scale per output channel, computed here).
A placeholder the converter changed, merged or dropped, or a constant it computed from one, raises
PlaceholderMismatch, never a silently wrong model: export then converts the real weights the old way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from liteship.errors import ConvertError
from liteship.runtime.tflite_file import TensorInfo, read_model

# value of the i-th placeholder: 1 + (i + 1) / 1024 is exact in float16 (10-bit mantissa) for i < 1023, so every
# placeholder stays distinct after the fp16 recipe; in int8 each keeps its own scale (value / 127).
STEP = 1.0 / 1024
INT8_MAX = 127  # TFLite's dynamic-range weights are symmetric, narrow range: [-127, 127]
CHUNK = 64 << 20
NEAR_ZERO_RANGE = 1e-6  # the converter's quantizer widens a narrower channel range to this


class PlaceholderMismatch(ConvertError):
    """The converter did something to a placeholder (or with it) that real weights cannot be written into."""


def placeholder_values(names: list[str], shapes: dict[str, tuple], *, rows: bool) -> dict[str, "float | np.ndarray"]:
    """name -> the placeholder's value: one number (a splat), or with ``rows`` one row that every row repeats.

    int8 splats all quantize to the same bytes (127), and the converter stores identical buffers once, so
    same-shaped placeholders share one buffer (their scales still tell them apart). In the offset layout
    unshare() then gives each its own buffer; inline, where no buffer can be added, int8 uses rows: a row whose
    largest value is the placeholder's number keeps the scales telling placeholders apart and makes each one's
    bytes its own, at the price of the converter holding the float32 matrices whole (small models only)."""
    if len(names) >= 1023:
        raise ConvertError(f"{len(names)} weight matrices: more than the 1022 placeholders float16 can tell apart")
    values = {}
    for i, name in enumerate(sorted(names)):
        v = 1.0 + (i + 1) * STEP
        if rows:
            width = shapes[name][1]
            row = np.random.default_rng(i).uniform(0.25 * v, v, width).astype(np.float32)
            row[0] = np.float32(v)
            values[name] = row
        else:
            values[name] = v
    return values


def peak(value) -> float:
    """The placeholder's number: its one value, or the largest of its row."""
    return float(np.max(value)) if isinstance(value, np.ndarray) else float(value)


@dataclass
class Slot:
    """Where one placeholder ended up: its buffer (file offset, length), dtype, and every tensor reading it."""
    name: str
    offset: int
    length: int
    dtype: str
    tensors: list[tuple[int, TensorInfo]] = field(default_factory=list)  # (subgraph, tensor)


def _repeats(path: Path, offset: int, length: int, row: np.ndarray) -> bool:
    """The buffer is ``row`` over and over (read in chunks, never mapped: nothing stays resident)."""
    rows_per_chunk = max(1, CHUNK // row.nbytes)
    with open(path, "rb") as f:
        f.seek(offset)
        left = length // row.nbytes
        if left * row.nbytes != length:
            return False
        while left:
            n = min(left, rows_per_chunk)
            chunk = np.frombuffer(f.read(n * row.nbytes), dtype=row.dtype)
            if chunk.size != n * row.size or not np.all(chunk.reshape(n, row.size) == row):
                return False
            left -= n
    return True


def _int8_name(t: TensorInfo, values: dict) -> str | None:
    """The placeholder an int8 tensor stands for, told by its scales (all equal: the placeholder's number / 127)."""
    if t.dtype != "int8" or not t.scale or max(t.scale) - min(t.scale) > 1e-6 * max(t.scale):
        return None
    guess = t.scale[0] * INT8_MAX
    name = min(values, key=lambda n: abs(peak(values[n]) - guess))
    return name if abs(peak(values[name]) - guess) < STEP / 4 else None


def _expected_row(value, dtype: str) -> np.ndarray:
    """What one row of the placeholder's buffer must hold, stored as the converter stores it."""
    row = np.atleast_1d(np.asarray(value, np.float32))
    if dtype == "float16":
        return row.astype(np.float16)
    if dtype == "int8":
        return quantize_symmetric(row[None, :], 1, 0)[0][0]
    return row


def find_placeholders(path: Path, values: dict[str, float], shapes: dict[str, tuple], *,
                      shared: bool = False) -> dict[str, Slot]:
    """name -> Slot for every placeholder in the converted file; ConvertError if one is missing, changed or split.
    ``shared``: int8 splats may share a buffer (see placeholder_values); unshare() separates them."""
    model = read_model(path)
    by_value = {}
    for name, v in values.items():
        first = np.atleast_1d(v)[0]
        by_value[("float32", np.float32(first).tobytes())] = name
        by_value[("float16", np.float16(first).tobytes())] = name
    found: dict[str, Slot] = {}
    with open(path, "rb") as f:
        for sg in model.subgraphs:
            for t in sg.tensors:
                extent = model.tensor_extent(model.subgraphs.index(sg), t.index)
                if extent is None or len(t.shape) != 2:
                    continue
                offset, length = extent
                if t.dtype in ("float32", "float16"):
                    f.seek(offset)
                    name = by_value.get((t.dtype, f.read(np.dtype(t.dtype).itemsize)))
                else:
                    name = _int8_name(t, values)
                if name is None:
                    continue
                if tuple(t.shape) != tuple(shapes[name]):
                    raise PlaceholderMismatch(f"the converter reshaped weight {name} to {t.shape} (expected {shapes[name]})")
                slot = found.get(name)
                if slot is not None and slot.offset != offset:
                    raise PlaceholderMismatch(f"the converter stored weight {name} twice; liteship cannot write it")
                if slot is None:
                    if any(other.offset == offset for other in found.values()) and not shared:
                        raise PlaceholderMismatch(f"the converter stored weight {name} in another weight's buffer")
                    if not _repeats(path, offset, length, _expected_row(values[name], t.dtype)):
                        raise PlaceholderMismatch(f"the converter changed weight {name} (folded something into it); "
                                           "liteship cannot write the real weight there")
                    slot = found[name] = Slot(name, offset, length, t.dtype)
                slot.tensors.append((model.subgraphs.index(sg), t))
    missing = sorted(set(values) - set(found))
    if missing:
        raise PlaceholderMismatch(f"weight {missing[0]} is not in the converted model as a whole tensor "
                           f"({len(missing)} of {len(values)} weights missing)")
    return found


def unshare(path: Path, slots: dict[str, Slot]) -> dict[str, Slot]:
    """Gives every placeholder that shares its buffer with another one a buffer of its own (new buffers at the
    file's end, zero-filled; its tensors pointed at them). Returns the slots with their new places."""
    from liteship.convert.tflite_metadata import embed_metadata, set_tensor_buffers

    first: dict[int, str] = {}
    moving = []
    for name, slot in sorted(slots.items()):
        if slot.offset in first:
            moving.append(name)
        else:
            first[slot.offset] = name
    if not moving:
        return slots
    indices = embed_metadata(path, path, {}, new_buffers=[slots[name].length for name in moving])
    set_tensor_buffers(path, {(sg, t.index): index for name, index in zip(moving, indices)
                              for sg, t in slots[name].tensors})
    model = read_model(path)
    out = dict(slots)
    for name, index in zip(moving, indices):
        offset, length = model.buffer_extents[index]
        out[name] = Slot(name, offset, length, slots[name].dtype,
                         [(sg, model.subgraphs[sg].tensors[t.index]) for sg, t in slots[name].tensors])
    for name, slot in out.items():  # the rewrite moved every old buffer too: read the places again
        if name not in moving:
            sg, t = slot.tensors[0]
            offset, length = model.tensor_extent(sg, t.index)
            out[name] = Slot(name, offset, length, slot.dtype,
                             [(s, model.subgraphs[s].tensors[x.index]) for s, x in slot.tensors])
    return out


def check_constants(path: Path, slots: dict[str, Slot], arrays, min_elements: int = 64) -> None:
    """Every other float constant of more than ``min_elements`` values in the converted file is one of ``arrays``
    (the real small weights given to the converter), as float32 or float16: a constant the converter computed from
    a placeholder (a fold into a bias, a transposed copy) would be wrong once the real weights are written, so it
    is an error here, never a silently wrong model."""
    known = set()
    for a in arrays:
        a = np.asarray(a, np.float32)
        known.add(a.tobytes())
        known.add(a.astype(np.float16).tobytes())
    model = read_model(path)
    taken = {slot.offset for slot in slots.values()}
    with open(path, "rb") as f:
        for si, sg in enumerate(model.subgraphs):
            for t in sg.tensors:
                extent = model.tensor_extent(si, t.index)
                if extent is None or extent[0] in taken or t.dtype not in ("float32", "float16"):
                    continue
                offset, length = extent
                if length // np.dtype(t.dtype).itemsize <= min_elements:
                    continue
                f.seek(offset)
                if f.read(length) not in known:
                    raise PlaceholderMismatch(f"the converter computed constant {t.name!r} {t.shape} from the placeholder "
                                       "weights; liteship cannot write the real weights into this model")


def quantize_symmetric(w: np.ndarray, channels: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights and float32 scales, one per channel along ``axis`` (one for the whole tensor when channels is
    1), as TFLite's dynamic-range recipe computes them: scale = max|w| / 127, q = round(w / scale) in [-127, 127].
    A channel whose range [min(w, 0), max(w, 0)] is under 1e-6 wide (an all-zero row) is widened to 1e-6 around
    its middle first, as the converter's quantizer does (measured: a zero row gets scale 5e-7 / 127)."""
    moved = np.moveaxis(w, axis, 0).reshape(channels, -1) if channels > 1 else w.reshape(1, -1)
    low = np.minimum(moved.min(axis=1), 0).astype(np.float32)
    high = np.maximum(moved.max(axis=1), 0).astype(np.float32)
    narrow = (high.astype(np.float64) - low) < NEAR_ZERO_RANGE
    middle = (low.astype(np.float64) + high) / 2
    low = np.where(narrow, middle - NEAR_ZERO_RANGE / 2, low).astype(np.float32)
    high = np.where(narrow, middle + NEAR_ZERO_RANGE / 2, high).astype(np.float32)
    scale = (np.maximum(np.abs(low), np.abs(high)) / np.float32(INT8_MAX)).astype(np.float32)
    q = np.clip(np.round(moved / scale[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    q = np.moveaxis(q.reshape((w.shape[axis],) + tuple(np.delete(w.shape, axis))), 0, axis) if channels > 1 \
        else q.reshape(w.shape)
    return q, scale


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def write_weights(path: Path, slots: dict[str, Slot], weight: Callable[[str], np.ndarray]) -> None:
    """Writes weight(name) (float32, the model's [out, in] layout) into each slot, in place, one matrix at a time."""
    fd = os.open(path, os.O_RDWR)
    try:
        for name, slot in sorted(slots.items()):
            w = np.ascontiguousarray(weight(name), dtype=np.float32)
            if slot.dtype == "float32":
                data = w
            elif slot.dtype == "float16":
                data = w.astype(np.float16)
            else:
                layouts = {(len(t.scale), t.quantized_dimension) for _, t in slot.tensors}
                if len(layouts) != 1:
                    raise ConvertError(f"weight {name}: its tensors disagree on how the buffer is quantized")
                (channels, axis), = layouts
                data, scale = quantize_symmetric(w, channels, axis)
                for _, t in slot.tensors:  # each tensor reading the buffer has its own quantization table
                    _pwrite_all(fd, scale.astype("<f4"), t.scale_at)
            if data.nbytes != slot.length:
                raise ConvertError(f"weight {name}: {data.nbytes} bytes do not fill the converted model's "
                                   f"{slot.length}-byte buffer")
            _pwrite_all(fd, np.ascontiguousarray(data), slot.offset)
            del w, data
    finally:
        os.close(fd)
