"""GPT-2's token embedding rows: what generation feeds the `embeds` input, read where the bundle keeps them.

Where (manifest config "token_table"; bundles made before the key existed are "lm_head"):
- "lm_head": the tied LM head's [V, E] weight inside model.tflite, found by following the graph back from the decode
  signature's `logits` output (through shape-only ops and fp16's DEQUANTIZE) to the FULLY_CONNECTED that makes them,
  and read a row at a time with pread (nothing of the file is mapped). The table is stored once and never
  dequantized whole; int8 rows carry per-row scales.
- "asset": assets/token_table.npy ([V, E] float32, float16 or int8) plus, for int8, assets/token_scales.npy ([V]
  float32), read the same way. Conversion writes these only when the converter rewrote the LM head weight so that it no
  longer equals the checkpoint's token embeddings: TFLite folds a constant scale in front of a FULLY_CONNECTED into
  its weight, which is right for the head's logits and wrong for every embedding read from that weight.

Conversion reads the table back through this same module and checks it against the checkpoint's `wte`
(liteship.convert.gpt2.token_table), so what the runtime reads is what was checked.
"""

from __future__ import annotations

import os

import numpy as np

from liteship.errors import RuntimeLiteshipError
from liteship.runtime.tflite_file import TFLiteModel, read_model

SOURCES = ("lm_head", "asset")
TABLE_ASSET, SCALES_ASSET = "token_table", "token_scales"  # asset roles of the "asset" source
# Ops that only view the same values in another shape: the walk from `logits` back to the LM head goes through them.
SHAPE_ONLY = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS"}
PRODUCTS = {"FULLY_CONNECTED", "BATCH_MATMUL"}
STORED_TYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "INT4": np.uint8}
INT4 = "int4"  # TokenTable.dtype of a table of packed 4-bit values, two per byte, the first in the low nibble


def lm_head_weight(model: TFLiteModel, signature: str = "decode") -> int:
    """Index, in ``signature``'s subgraph, of the stored weight the LM head multiplies by (int8, fp16 or fp32)."""
    sig = next((s for s in model.signatures if s.key == signature), None)
    if sig is None or "logits" not in sig.outputs:
        raise RuntimeLiteshipError(f"the model has no {signature!r} signature with a 'logits' output; is it a "
                                   "liteship GPT-2 bundle?")
    tensor, sub = sig.outputs["logits"], sig.subgraph
    op = model.producer(sub, tensor)
    while op is not None and op[0] in SHAPE_ONLY:
        op = model.producer(sub, op[1][0])
    if op is None or op[0] not in PRODUCTS or len(op[1]) < 2:
        raise RuntimeLiteshipError(f"cannot find the LM head: {signature!r} logits do not come from a matrix product")
    weight = op[1][1]
    source = model.producer(sub, weight)
    if source is not None and source[0] == "DEQUANTIZE":  # fp16 weights are stored fp16 and widened at run time
        weight = source[1][0]
    return weight


class _FileTable:
    """A table stored in a file at ``offset`` (``count`` values of ``dtype``, viewed as ``shape``), read with
    pread a row at a time: nothing of it is mapped, so only the rows in hand take memory. A memory map of the
    file paged in far more than the rows read: each fault maps up to 64 KiB of neighbouring pages already in the
    page cache (the kernel's fault-around, which MADV_RANDOM does not stop), so a ~900-token prompt made 28 of
    the 37 MiB of an int8 table resident.

    Indexing takes an integer array whose last axis holds positions within one row (``table[ids]`` of a [V, E]
    table: whole rows; ``table[byte_positions]`` of a flat one: the bytes of one row per index row)."""

    def __init__(self, path, offset: int, dtype, count: int, shape: tuple):
        self.dtype, self.shape, self._offset = np.dtype(dtype), tuple(shape), offset
        self.ndim = len(shape)
        self._count = count
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))

    def _read(self, first: int, n: int) -> np.ndarray:
        size = self.dtype.itemsize
        if hasattr(os, "pread"):
            data = os.pread(self._fd, n * size, self._offset + first * size)
        else:  # Windows has no pread
            os.lseek(self._fd, self._offset + first * size, os.SEEK_SET)
            data = os.read(self._fd, n * size)
        if len(data) != n * size or first < 0 or first + n > self._count:
            raise RuntimeLiteshipError(f"token table: values {first}..{first + n} are outside the stored table")
        return np.frombuffer(data, self.dtype)

    def __getitem__(self, index) -> np.ndarray:
        index = np.asarray(index)
        if self.ndim == 2:  # whole rows
            width = self.shape[1]
            return np.stack([self._read(int(i) * width, width) for i in index.reshape(-1)]).reshape(
                *index.shape, width)
        flat = index.reshape(-1, index.shape[-1])  # one row's positions per index row: read its span once
        out = np.empty(flat.shape, self.dtype)
        for r, positions in enumerate(flat):
            lo = int(positions.min())
            out[r] = self._read(lo, int(positions.max()) - lo + 1)[positions - lo]
        return out.reshape(index.shape)

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None


def _npy_file_table(path) -> "_FileTable | np.ndarray":
    """A .npy file's array as a _FileTable (read by rows, never mapped); a Fortran-ordered one is loaded whole."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        offset = fh.tell()
    if fortran or len(shape) != 2 or dtype.hasobject:
        return np.load(path, allow_pickle=False)
    return _FileTable(path, offset, dtype, int(np.prod(shape)), shape)


class TokenTable:
    """Rows of the [V, E] token embedding table as float32, from a stored table (float32, float16, or int8 or int4
    with one scale per row), without ever widening the whole table.

    ``table`` is [V, E], or for int4 the flat packed bytes (V * E values, two per byte); ``dtype`` says which."""

    def __init__(self, table: np.ndarray, scales: np.ndarray | None = None, *, shape: tuple | None = None):
        self.table, self.scales = table, scales
        self.dtype = INT4 if shape is not None else table.dtype
        self.shape = tuple(shape) if shape is not None else table.shape
        self.vocab_size, self.width = self.shape

    @classmethod
    def from_model(cls, source, vocab: int, width: int, signature: str = "decode") -> "TokenTable":
        """The LM head's weight inside a .tflite: a path (read by rows with pread) or the model's bytes (viewed in
        place)."""
        in_memory = isinstance(source, (bytes, bytearray, memoryview))
        label = "the model" if in_memory else str(source)
        model = read_model(source)
        sub = next(s.subgraph for s in model.signatures if s.key == signature) if model.signatures else 0
        index = lm_head_weight(model, signature)
        info = model.subgraphs[sub].tensors[index]
        extent = model.tensor_extent(sub, index)
        dtype = STORED_TYPES.get(info.dtype)
        if list(info.shape) != [vocab, width] or dtype is None or extent is None:
            raise RuntimeLiteshipError(
                f"{label}: the LM head weight is {info.dtype} {list(info.shape)}, not a stored [{vocab}, {width}] "
                "float32, float16 or int8 token table")
        offset, length = extent
        packed = info.dtype == "INT4"
        count = (vocab * width + 1) // 2 if packed else vocab * width
        if length != count * np.dtype(dtype).itemsize:
            raise RuntimeLiteshipError(f"{label}: the LM head weight holds {length} bytes, not [{vocab}, {width}]")
        if in_memory:
            table = np.frombuffer(source, dtype=dtype, count=count, offset=offset)
        else:
            table = _FileTable(source, offset, dtype, count, (count,) if packed else (vocab, width))
        if not packed and in_memory:
            table = table.reshape(vocab, width)
        scales = None
        if dtype is np.int8 or packed:
            if any(info.zero_point) or (len(info.scale) > 1 and info.quantized_dimension != 0):
                raise RuntimeLiteshipError(f"{label}: the {info.dtype} token table is not symmetric per-row")
            if len(info.scale) not in (1, vocab):
                raise RuntimeLiteshipError(f"{label}: the {info.dtype} token table has {len(info.scale)} scales for "
                                           f"{vocab} rows")
            scales = np.broadcast_to(np.asarray(info.scale, np.float32), (vocab,))
        return cls(table, scales, shape=(vocab, width) if packed else None)

    @classmethod
    def from_files(cls, table_path, scales_path=None) -> "TokenTable":
        """A table saved as .npy (and, for int8, its per-row scales), read by rows with pread."""
        try:
            table = _npy_file_table(table_path)
            scales = None if scales_path is None else np.load(scales_path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise RuntimeLiteshipError(f"{table_path}: not a readable token table ({exc})") from None
        if table.ndim != 2 or table.dtype.type not in STORED_TYPES.values():
            raise RuntimeLiteshipError(f"{table_path}: a {table.dtype} {list(table.shape)} array, not a [V, E] "
                                       "float32, float16 or int8 token table")
        if (table.dtype == np.int8) != (scales is not None) or (scales is not None and scales.shape != table.shape[:1]):
            raise RuntimeLiteshipError(f"{table_path}: an int8 table needs one scale per row, a float table none")
        return cls(table, scales)

    @classmethod
    def from_bundle(cls, bundle) -> "TokenTable":
        """The table a GPT-2 bundle's manifest points at (config "token_table", default "lm_head")."""
        cfg = bundle.config
        source = cfg.get("token_table", "lm_head")
        if source == "asset":
            scales = bundle.asset(SCALES_ASSET) if bundle.has_asset(SCALES_ASSET) else None
            table = cls.from_files(bundle.asset(TABLE_ASSET), scales)
        elif source == "lm_head":
            table = cls.from_model(bundle.model_path, int(cfg["model"]["vocab_size"]), int(cfg["model"]["n_embd"]))
        else:
            raise RuntimeLiteshipError(f"{bundle.root}: unknown token_table {source!r} in the manifest (one of "
                                       f"{', '.join(SOURCES)}); a newer liteship made it")
        want = (int(cfg["model"]["vocab_size"]), int(cfg["model"]["n_embd"]))
        if table.shape != want:
            raise RuntimeLiteshipError(f"{bundle.root}: the token table is {list(table.shape)}, the model "
                                       f"needs {list(want)}")
        return table

    def rows(self, ids: np.ndarray, out: np.ndarray) -> None:
        """out[:len(ids)] = embedding rows of ids (float32)."""
        if self.dtype == INT4:
            at = np.asarray(ids)[:, None] * self.width + np.arange(self.width)  # (n, E) value positions
            byte = self.table[at >> 1]
            nibble = np.where(at & 1, byte >> 4, byte & 0xF).astype(np.int8)
            rows = (nibble - ((nibble & 8) << 1)).astype(np.float32)  # two's complement of 4 bits: 8..15 -> -8..-1
        else:
            rows = self.table[ids].astype(np.float32)  # (n, E)
        if self.scales is not None:
            rows *= self.scales[ids][:, None]
        out[: len(ids)] = rows

    def all_rows(self, chunk: int = 4096):
        """Yield (start, rows float32 (n, E)) over the whole table, a chunk at a time (for checks)."""
        out = np.empty((chunk, self.width), np.float32)
        for start in range(0, self.vocab_size, chunk):
            ids = np.arange(start, min(start + chunk, self.vocab_size))
            self.rows(ids, out)
            yield start, out[: len(ids)]
