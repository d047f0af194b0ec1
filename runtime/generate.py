"""Text generation with a GPT-2 bundle: the one place that drives the `prefill` and `decode` signatures.

The KV cache lives in numpy arrays the model reads in place (no cache is ever passed in or copied back per step).
Shapes as this module sees them, for L layers, H heads, head size hd, context C (manifest config "max_context"),
largest prefill chunk P ("prefill_len"), T the chunk prefill runs now (P, or less at long context: see
KVCacheSession.chunk_length), S cache slots (SLOT_STEP at first, grown in steps of it as the text grows, at most
C) and R rows of prefill logits (1 in generation, T for evaluation):

  prefill: embeds[T, E] float32, positions[T] int32, cache_mask[1, S] float32, chunk_mask[T, T] float32,
           k_i[H, S, hd], v_i[H, S, hd], rows[R]
           -> logits[R, V], k_new_i[H, T, hd], v_new_i[H, T, hd]
  decode:  embeds[1, E], position[1], mask[1, S+1], k_i[H, S, hd], v_i[H, S, hd]
           -> logits[1, V], k_new[L, H, 1, hd], v_new[L, H, 1, hd]

Older bundles have prefill with a fixed T = P, one mask[P, S+P] and stacked k_new/v_new[L, H, P, hd] outputs;
older still, a fixed C in prefill (and decode too, before that) and no rows. The runtime runs what the bundle's
signatures offer.

Two engines run them. ``compiled`` (ai-edge-litert 2.x): LiteRT's CompiledModel with XNNPACK's packed
weights in a file under LITESHIP_CACHE (built on the first start, mapped afterwards, shared by both signatures),
every input and output a numpy array bound zero-copy, and one cache memory for both signatures. ``interpreter``
(tflite-runtime, tf.lite): the Interpreter, with the cache in decode's own input tensors written
through zero-copy views and prefill's own copy synced from it; XNNPACK packs the weights once per signature.

`embeds` are token embedding rows, read (and for int8 dequantized, one row at a time) by runtime.token_table: from
the tied LM head's weight inside the .tflite itself with pread, a row at a time (the table is stored once and never
dequantized whole), or from the bundle's own copy where conversion found the converter had rewritten that weight.

What is cached: for every token already seen at position p < C, its K and V (row p of each head in k_i / v_i);
mask[.., p] is 0 for filled slots and -1e9 for empty ones. The last P columns of a prefill mask (the last column of
a decode mask) are the chunk attending to itself, causally. After each call the runtime copies only
the new tokens' K/V slice into the cache, so a step's cost does not grow with the number of filled slots.
"""
from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from liteship.errors import RuntimeLiteshipError
from liteship.runtime.backend_private import HostTensorBuffer, SignatureSubgraph
from liteship.runtime.bundle import cache_root
from liteship.runtime.interpreter import backend_version, native_stderr_captured
from liteship.runtime.memory import (
    PLANNING_MMAP_THRESHOLD,
    STEADY_MMAP_THRESHOLD,
    large_blocks_unmapped,
    set_mmap_threshold,
)
from liteship.runtime.token_table import TokenTable

MASK_EMPTY = np.float32(-1e9)  # additive mask of an empty cache slot; exp(-1e9 - max) == 0 in float32


class _SignatureBuffers:
    """A signature's input/output tensors as numpy views into the interpreter's own memory.

    The signature's subgraph is driven through runtime.backend_private (the wrapper's per-subgraph calls of
    ai-edge-litert, tflite-runtime and tf.lite). The views stay valid until the next ``allocate()``, which replaces
    them: a resize moves every tensor of the subgraph, so callers re-read ``inputs``/``outputs`` after one."""

    def __init__(self, interp, key: str):
        try:
            runner = interp.get_signature_runner(key)
        except ValueError:
            raise RuntimeLiteshipError(f"the model has no {key!r} signature; is it a liteship GPT-2 bundle?") from None
        self._subgraph = SignatureSubgraph(interp, runner)
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        self._in = {n: d["index"] for n, d in inputs.items()}
        self._out = {n: d["index"] for n, d in outputs.items()}
        self.output_names = list(self._out)
        # -1 marks a dimension the graph leaves open (the slot count, prefill's rows); older bundles have none
        self.shape_signature = {n: [int(x) for x in d.get("shape_signature", d["shape"])] for n, d in inputs.items()}
        self.inputs: dict = {}
        self.outputs: dict = {}

    def resize(self, shapes: dict[str, tuple]) -> None:
        """Give inputs new shapes (outputs follow; their names are ignored here); takes effect (and invalidates the
        views) at the next allocate()."""
        for name, shape in shapes.items():
            if name in self._in:
                self._subgraph.resize_input(self._in[name], shape)

    def allocate(self) -> None:
        self._subgraph.allocate()
        self.inputs = {n: self._subgraph.view(i) for n, i in self._in.items()}
        self.outputs = {n: self._subgraph.view(i) for n, i in self._out.items()}

    def cache(self, n_layer: int):
        """([k_0..k_{L-1}], [v_0..v_{L-1}]) as views, valid until the next allocate()."""
        return [self.inputs[f"k_{l}"] for l in range(n_layer)], [self.inputs[f"v_{l}"] for l in range(n_layer)]

    def invoke(self) -> None:
        self._subgraph.invoke()


def _aligned(shape: tuple, dtype, align: int = 64) -> np.ndarray:
    """A zeroed array whose data starts on an ``align``-byte boundary (what LiteRT binds without a copy)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _mapped(shape: tuple, dtype) -> np.ndarray:
    """A zeroed array in its own anonymous memory map (page-aligned): its memory goes back to the system the
    moment the array is dropped. The KV cache lives in these: malloc'd cache arrays of a grown cache stayed in the
    heap after they were freed (at 896 slots ~60 MiB of the process was freed-but-kept heap)."""
    nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype, count=int(np.prod(shape))).reshape(shape)


class _CompiledSignature:
    """A signature of a LiteRT CompiledModel with the same face as _SignatureBuffers: every input and output is a
    numpy array this class owns, bound zero-copy (LiteRT reads and writes them in place). An input whose shape
    changed is re-shaped by LiteRT on the next invoke, which re-plans the subgraph (no weight is packed again:
    they are in the weight cache)."""

    def __init__(self, model, key: str, specs: dict):
        self._model, self._key = model, key
        self._dtype = {t["name"]: np.dtype(t["dtype"]) for t in specs["inputs"] + specs["outputs"]}
        self._in = [t["name"] for t in specs["inputs"]]
        self._out = [t["name"] for t in specs["outputs"]]
        self.output_names = list(self._out)
        self.shape_signature = {t["name"]: [int(x) for x in t["shape"]] for t in specs["inputs"]}
        self.shapes: dict[str, tuple] = {}
        self.inputs: dict = {}
        self.outputs: dict = {}
        self._resized = True

    def resize(self, shapes: dict[str, tuple]) -> None:
        self.shapes.update(shapes)

    def bind(self, arrays: dict[str, np.ndarray]) -> None:
        """Use these arrays (the session's cache) as inputs from the next allocate() on."""
        self._external = dict(arrays)

    def release(self) -> None:
        """Drop every reference to the bound arrays (until the next bind and allocate), so that the session can
        free each old cache array as soon as it has copied it into a grown one."""
        for name in getattr(self, "_external", {}):
            self.inputs.pop(name, None)
            getattr(self, "_bound_in", {}).pop(name, None)
        self._external = {}

    def allocate(self) -> None:
        old = {**self.inputs, **self.outputs}
        external = getattr(self, "_external", {})
        arrays = {}
        for name in self._in + self._out:
            shape = tuple(self.shapes[name])
            same = name in old and old[name].shape == shape and name not in external
            arrays[name] = external[name] if name in external else old[name] if same else \
                _aligned(shape, self._dtype[name])
            assert arrays[name].shape == shape, (name, arrays[name].shape, shape)
        self.inputs = {n: arrays[n] for n in self._in}
        self.outputs = {n: arrays[n] for n in self._out}
        self._bound_in = {n: HostTensorBuffer(a) for n, a in self.inputs.items()}
        self._bound_out = {n: HostTensorBuffer(a) for n, a in self.outputs.items()}
        self._resized = True

    def cache(self, n_layer: int):
        return [self.inputs[f"k_{l}"] for l in range(n_layer)], [self.inputs[f"v_{l}"] for l in range(n_layer)]

    def invoke(self) -> None:
        if self._resized:  # LiteRT re-plans now, and logs each automatic re-shape on stderr
            with native_stderr_captured(), large_blocks_unmapped():
                self._model.run_by_name(self._key, self._bound_in, self._bound_out)
            self._resized = False
        else:
            self._model.run_by_name(self._key, self._bound_in, self._bound_out)


def weight_cache_path(bundle, backend: str) -> Path | None:
    """Where XNNPACK keeps this model's packed weights: under LITESHIP_CACHE, keyed by the model's sha256 and the
    backend's version (a new LiteRT may pack differently). None when that folder cannot be written."""
    version = backend_version(backend).replace(" ", "-")
    folder = cache_root() / "xnnpack"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder / f"{bundle.sha256()[:24]}-{version}.xnnpack" if os.access(folder, os.W_OK) else None


def _open_bundle(bundle):
    from liteship.runtime.bundle import Bundle
    return bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


SLOT_STEP = 128  # decode's cache grows this many slots at a time; a growth re-allocates (20-250 ms at 124M)
MIN_CHUNK = 16  # prefill's chunk is never shortened below this (KVCacheSession.chunk_length)


def _int8_cache_scales(decode_spec: dict, n_layer: int) -> dict | None:
    """{"k": [L], "v": [L]} scales when the bundle's cache inputs are int8 (convert/gpt2/kv_int8.py), else None."""
    inputs = {t["name"]: t for t in decode_spec.get("inputs", [])}
    if inputs.get("k_0", {}).get("dtype") != "int8":
        return None
    return {kv: [float(inputs[f"{kv}_{l}"]["quantization"]["scale"]) for l in range(n_layer)] for kv in "kv"}


def _quantized(x: np.ndarray, scale: float) -> np.ndarray:
    """float32 K/V rows as the int8 cache holds them: round to nearest, saturate at the calibrated range."""
    return np.clip(np.rint(x / np.float32(scale)), -128, 127).astype(np.int8)


class KVCacheSession:
    """One sequence's state: the model (``engine``: auto, compiled or interpreter; see the module docstring), the
    cache, and how many slots are filled.

    Decode attends over ``slots`` cache slots. Bundles whose decode signature leaves the slot count open (all
    made since the graph did) start at SLOT_STEP slots and grow by SLOT_STEP as the text does, so a step reads
    only the cache in use: at 124M int8 a step over 256 slots costs about half one over 1024. ``grow_cache=False``
    (or an older bundle) sizes it to max_context from the start: a constant step time, that of the longest text.
    The default (None) grows the cache except for fp16 bundles, where a growth costs too much (see below).
    ``prefill_chunk`` fixes prefill's chunk length (at most prefill_len) where the bundle leaves it open; by
    default chunk_length chooses it per chunk.
    """

    def __init__(self, bundle, *, threads: int | None = None, backend: str = "auto", grow_cache: bool | None = None,
                 engine: str = "auto", prefill_chunk: int | None = None):
        from liteship.runtime.interpreter import compiled_model_available, create_compiled_model, create_interpreter

        set_mmap_threshold(PLANNING_MMAP_THRESHOLD)  # LiteRT plans here: see large_blocks_unmapped
        self.bundle = _open_bundle(bundle)
        if self.bundle.family != "gpt2":
            raise RuntimeLiteshipError(f"{self.bundle.root}: a {self.bundle.family!r} bundle, not a GPT-2 one")
        cfg = self.bundle.config
        self.max_context = int(cfg["max_context"])
        self.prefill_len = int(cfg["prefill_len"])
        self.n_layer = int(cfg["model"]["n_layer"])
        self.vocab_size = int(cfg["model"]["vocab_size"])
        self.threads = threads or default_threads()
        E = int(cfg["model"]["n_embd"])
        self.n_head = int(cfg["model"]["n_head"])
        self.head_dim = E // self.n_head
        specs = self.bundle.signatures
        if engine == "auto":
            engine = "compiled" if specs and compiled_model_available(backend) else "interpreter"
        if engine not in ("compiled", "interpreter"):
            raise RuntimeLiteshipError(f"unknown engine {engine!r}; choose auto, compiled or interpreter")
        if engine == "compiled" and not compiled_model_available(backend):
            raise RuntimeLiteshipError("the compiled engine needs ai-edge-litert 2.x (LiteRT's CompiledModel)")
        self.engine = engine
        self.weight_cache = None
        if engine == "compiled":
            # Packed weights in a file (built on the first start, mapped on later ones), shared by both signatures.
            self.weight_cache = weight_cache_path(self.bundle, backend)
            self.model = create_compiled_model(self.bundle.model_path, num_threads=self.threads,
                                               weight_cache=self.weight_cache)
            self._decode = _CompiledSignature(self.model, "decode", specs["decode"])
            self._prefill = _CompiledSignature(self.model, "prefill", specs["prefill"])
            self.interp = None
        else:
            self.interp = create_interpreter(self.bundle.model_path, backend=backend, num_threads=self.threads)
            self._decode = _SignatureBuffers(self.interp, "decode")
            self._prefill = _SignatureBuffers(self.interp, "prefill")
        self._open_slots = -1 in self._decode.shape_signature.get("k_0", [])
        if grow_cache and not self._open_slots:
            raise RuntimeLiteshipError(f"{self.bundle.root}: its decode signature has a fixed cache of "
                                       f"{self.max_context} slots (converted before liteship grew caches); "
                                       "re-convert it to grow the cache")
        self.slot_step = SLOT_STEP
        if grow_cache is None:
            # A growth re-prepares decode's XNNPACK subgraph: 20-60 ms for int8 and 30-250 ms for fp32 weights at
            # 124M, but 0.4-1.5 s and +500 MB RSS for fp16 ones, which XNNPACK unpacks to fp32 again each time
            # (measured with the interpreter engine; the compiled engine's weight cache may change that: not measured).
            grow_cache = self._open_slots and self.bundle.quantization != "fp16"
        self.grow_cache = bool(grow_cache) and self.max_context > self.slot_step  # else one step holds it all
        self._min_slots = min(self.slot_step, self.max_context) if self.grow_cache else self.max_context
        self.slots = self._min_slots if self._open_slots else self.max_context
        # Prefill's own cache copy and its logits rows, where the bundle leaves them open (bundles made since
        # prefill's were): the cache holds only the slots a chunk attends to, and generation asks for the last
        # row of logits only. Older bundles: C slots and P rows, fixed.
        self._prefill_open = -1 in self._prefill.shape_signature.get("k_0", [])
        self._prefill_rows_open = self._prefill.shape_signature.get("rows") == [-1]
        # Bundles made since prefill's chunk was left open: its length T is chosen per chunk (chunk_length), the
        # mask comes in two blocks (cache_mask, chunk_mask) and each layer's K/V is an output of its own.
        self._chunk_open = "chunk_mask" in self._prefill.shape_signature
        self._kv_per_layer = "k_new_0" in self._prefill.output_names
        self.prefill_chunk = prefill_chunk  # None: chunk_length decides
        if prefill_chunk is not None and not 1 <= prefill_chunk <= self.prefill_len:
            raise RuntimeLiteshipError(f"prefill_chunk {prefill_chunk} must be between 1 and the bundle's "
                                       f"prefill_len ({self.prefill_len})")
        # A first chunk attends to no cache; it gets one masked slot: XNNPACK cannot reshape around a zero-sized one.
        self._prefill_min_slots = 1 if self.grow_cache else self.max_context
        self.prefill_slots = self._prefill_min_slots if self._prefill_open else self.max_context
        self.prefill_rows = 1 if self._prefill_rows_open else self.prefill_len
        self.prefill_T = self.prefill_len  # the chunk length prefill is allocated for now
        self._chunk_mask = np.triu(np.full((self.prefill_T,) * 2, MASK_EMPTY, np.float32), k=1)  # (T, T): t sees <= t
        # One cache memory for both signatures where the engine binds our arrays (compiled) and both slot counts are
        # open: prefill attends over decode's slots, and nothing is copied between two caches.
        self._shared_cache = engine == "compiled" and self._open_slots and self._prefill_open and self.grow_cache
        if self._shared_cache:
            self.prefill_slots = self.slots
        # Shapes before the first allocation, so the delegate is prepared at these sizes
        self._decode.resize(self._decode_shapes(self.slots))
        self._prefill.resize(self._prefill_shapes(self.prefill_slots, self.prefill_rows, self.prefill_T))
        if engine == "interpreter":
            self.interp.allocate_tensors()  # applies the default (XNNPACK) delegate to every subgraph
        # An int8 cache (bundles converted with --kv-cache int8): each new row is quantized as it is written
        self._kv_scales = _int8_cache_scales(specs.get("decode", {}), self.n_layer)
        self._cache_dtype = np.int8 if self._kv_scales else np.float32
        if self._shared_cache:  # the session's own arrays, bound to both signatures
            cache = {n: _mapped(shape, self._cache_dtype) for n, shape in self._cache_shapes(self.slots).items()}
            self._decode.bind(cache)
            self._prefill.bind(cache)
        self._decode.allocate()
        self._prefill.allocate()
        self.tokens = TokenTable.from_bundle(self.bundle)
        self._decode_cache = self._decode.cache(self.n_layer)
        self._prefill_cache = self._prefill.cache(self.n_layer)
        self.reset()
        set_mmap_threshold(STEADY_MMAP_THRESHOLD)

    def cache_description(self) -> str:
        return f"grows in steps of {self.slot_step} slots" if self.grow_cache else f"all {self.max_context} slots"

    def tensors(self) -> dict[str, dict[str, np.ndarray]]:
        """{"decode": {name: array}, "prefill": {...}}: every input and output of each signature as the array the
        engine reads or writes now (the caches, prefill's logits rows), to see what memory a session holds. Valid
        until the next prefill or decode (either may re-allocate); do not write to them."""
        return {"decode": {**self._decode.inputs, **self._decode.outputs},
                "prefill": {**self._prefill.inputs, **self._prefill.outputs}}

    def _cache_shapes(self, slots: int) -> dict[str, tuple]:
        shape = (self.n_head, slots, self.head_dim)
        return {f"{kv}_{l}": shape for kv in "kv" for l in range(self.n_layer)}

    def _decode_shapes(self, slots: int) -> dict[str, tuple]:
        """Every input and output of decode at ``slots`` cache slots, as this class sees them."""
        E, L, H, hd = self.n_head * self.head_dim, self.n_layer, self.n_head, self.head_dim
        return {"embeds": (1, E), "position": (1,), "mask": (1, slots + 1), **self._cache_shapes(slots),
                "logits": (1, self.vocab_size), "k_new": (L, H, 1, hd), "v_new": (L, H, 1, hd)}

    def _prefill_shapes(self, slots: int, rows: int, T: int) -> dict[str, tuple]:
        """Every input and output of prefill at ``slots`` cache slots, ``rows`` rows of logits and chunk length
        ``T`` (P for bundles whose chunk is fixed)."""
        E, L, H, hd = self.n_head * self.head_dim, self.n_layer, self.n_head, self.head_dim
        shapes = {"embeds": (T, E), "positions": (T,), **self._cache_shapes(slots), "logits": (rows, self.vocab_size)}
        if self._chunk_open:
            shapes.update({"cache_mask": (1, slots), "chunk_mask": (T, T)})
        else:
            shapes["mask"] = (T, slots + T)
        if self._kv_per_layer:
            shapes.update({f"{kv}_new_{l}": (H, T, hd) for kv in "kv" for l in range(L)})
        else:
            shapes.update({"k_new": (L, H, T, hd), "v_new": (L, H, T, hd)})
        if self._prefill_rows_open:
            shapes["rows"] = (rows,)
        return shapes

    def _slots_holding(self, n: int) -> int:
        """Decode's slot count once the cache holds ``n`` tokens."""
        if not self.grow_cache:
            return self.max_context
        return max(self._min_slots, min(self.max_context, -(-n // self.slot_step) * self.slot_step))

    def chunk_length(self, start: int) -> int:
        """Prefill's chunk length T for a chunk starting at position ``start``: P (prefill_len), halved until the
        chunk's attention scores, [H, T, S + T] floats over the S slots it attends to, are no larger than a full
        first chunk's, [H, P, first S + P]. Those scores, and the [H, T, S] tensors beside them, are what prefill's
        arena grows with at long context (docs/gpt2_kv_cache.md): at 124M, T = 128 over 896 slots held ~15 MiB of
        it. Never below MIN_CHUNK (or P, if smaller). Bundles whose chunk is fixed: always P."""
        P = self.prefill_len
        if not self._chunk_open:
            return P
        if self.prefill_chunk is not None:
            return self.prefill_chunk
        budget = P * (self._slots_holding(P) + P)
        T = P
        while T // 2 >= min(P, MIN_CHUNK) and T * (self._slots_holding(start + T) + T) > budget:
            T //= 2
        return T

    def _size_prefill(self, needed: int, rows: int, T: int) -> None:
        """Make prefill's cache hold at least ``needed`` slots (in steps of slot_step) and return ``rows`` rows of
        logits (where the bundle leaves them open) for chunks of ``T``."""
        slots = self.prefill_slots
        if self._prefill_open and needed > slots:
            slots = min(self.max_context, -(-needed // self.slot_step) * self.slot_step)
        self._resize_prefill(slots, rows if self._prefill_rows_open else self.prefill_rows, T)

    def _resize_prefill(self, slots: int, rows: int, T: int, *, force: bool = False) -> None:
        """A change re-allocates prefill's tensors. Its own cache copy starts empty and is synced again from
        decode's, which always holds the sequence; a shared cache is decode's own arrays, bound again."""
        if (slots, rows, T) == (self.prefill_slots, self.prefill_rows, self.prefill_T) and not force:
            return
        self._prefill.resize(self._prefill_shapes(slots, rows, T))
        if self._shared_cache:
            self._prefill.bind(self._cache_arrays(self._decode_cache))
        self._prefill.allocate()
        self.prefill_slots, self.prefill_rows, self.prefill_T = slots, rows, T
        self._chunk_mask = np.triu(np.full((T, T), MASK_EMPTY, np.float32), k=1)  # (T, T): t sees <= t
        self._prefill_cache = self._prefill.cache(self.n_layer)
        if not self._shared_cache:
            for arrays in self._prefill_cache:
                for a in arrays:
                    a.fill(0.0)  # empty slots are masked, but 0 * NaN is NaN: fresh buffers hold garbage
            self._prefill_synced = 0

    def _cache_arrays(self, cache) -> dict[str, np.ndarray]:
        ks, vs = cache
        return {**{f"k_{l}": k for l, k in enumerate(ks)}, **{f"v_{l}": v for l, v in enumerate(vs)}}

    def _resize_decode(self, slots: int) -> None:
        """Re-allocate decode's cache at ``slots`` slots, keeping the filled ones (a resize moves every buffer)."""
        with large_blocks_unmapped():
            self._resize_decode_now(slots)

    def _resize_decode_now(self, slots: int) -> None:
        keep = min(self.length, slots)
        if self._shared_cache:
            self._grow_shared(slots, keep)
            return
        ks, vs = self._decode_cache
        saved = [(k[:, :keep, :].copy(), v[:, :keep, :].copy()) for k, v in zip(ks, vs)]
        self._decode.resize(self._decode_shapes(slots))
        self._decode.allocate()
        self.slots = slots
        self._decode_cache = self._decode.cache(self.n_layer)
        for (k, v), (sk, sv) in zip(zip(*self._decode_cache), saved):
            k[:, :keep, :] = sk[:, :keep, :]
            v[:, :keep, :] = sv[:, :keep, :]
            k[:, keep:, :] = 0.0  # empty slots are masked, but 0 * NaN is NaN: fresh buffers hold garbage
            v[:, keep:, :] = 0.0
        del saved
        self._write_decode_mask()

    def _grow_shared(self, slots: int, keep: int) -> None:
        """The session-owned cache (compiled engine) at ``slots`` slots, keeping the first ``keep``: one layer's
        array at a time is replaced and the old one freed at once, so a growth holds one layer's old array beside
        the new cache, not a whole second cache (at 768 -> 896 slots that was +54 MiB of peak RSS)."""
        self._decode.release()
        self._prefill.release()
        ks, vs = self._decode_cache
        self._decode_cache = self._prefill_cache = None
        for arrays in (ks, vs):
            for l in range(self.n_layer):
                new = _mapped((self.n_head, slots, self.head_dim), self._cache_dtype)  # (H, slots, hd), zeros
                new[:, :keep, :] = arrays[l][:, :keep, :]
                arrays[l] = new  # the old array's last reference goes: unmapped here
        cache = self._cache_arrays((ks, vs))
        self._decode.resize(self._decode_shapes(slots))
        self._decode.bind(cache)
        self._decode.allocate()
        self.slots = slots
        self._decode_cache = self._decode.cache(self.n_layer)
        self._write_decode_mask()
        self._prefill.resize(self._prefill_shapes(slots, self.prefill_rows, self.prefill_T))
        self._prefill.bind(cache)
        self._prefill.allocate()
        self.prefill_slots = slots
        self._prefill_cache = self._prefill.cache(self.n_layer)

    def _ensure_slots(self, needed: int) -> None:
        """Make decode's cache hold at least ``needed`` slots (a multiple of slot_step, at most max_context)."""
        if needed > self.slots:
            self._resize_decode(min(self.max_context, -(-needed // self.slot_step) * self.slot_step))

    def _write_decode_mask(self) -> None:
        mask = self._decode.inputs["mask"]  # (1, slots+1)
        mask[:] = MASK_EMPTY
        mask[0, :self.length] = 0.0
        mask[0, -1] = 0.0  # the new token always sees itself

    def reset(self) -> None:
        """Forget the sequence: every cache slot empty (and a grown cache back to its first size)."""
        self.length = 0
        self._prefill_synced = 0  # slots [0, this) of the prefill signature's cache hold the sequence's K/V
        if self.slots != self._min_slots:
            self._resize_decode(self._min_slots)
        if self._prefill_open and not self._shared_cache:
            self._resize_prefill(self._prefill_min_slots, self.prefill_rows, self.prefill_T)
        # Empty slots are masked, but 0 * NaN is NaN: fresh buffers hold garbage, so zero them.
        for arrays in (*self._decode_cache, *self._prefill_cache):
            for a in arrays:
                a.fill(0.0)
        self._write_decode_mask()

    def _write(self, k_new, v_new, start: int, n: int) -> None:
        """Copy the K/V of n new tokens into decode's cache (which holds the sequence), slots start..start+n-1.
        k_new/v_new: (L, H, T, hd), or per layer a list of (H, T, hd)."""
        ks, vs = self._decode_cache
        for l in range(self.n_layer):
            if self._kv_scales:  # one layer's temporaries at a time: all 2L at once stayed in the heap (12 MiB)
                ks[l][:, start:start + n, :] = _quantized(k_new[l][:, :n, :], self._kv_scales["k"][l])
                vs[l][:, start:start + n, :] = _quantized(v_new[l][:, :n, :], self._kv_scales["v"][l])
            else:
                ks[l][:, start:start + n, :] = k_new[l][:, :n, :]  # (H, n, hd)
                vs[l][:, start:start + n, :] = v_new[l][:, :n, :]  # (H, n, hd)

    def _new_kv(self, outputs: dict):
        """Prefill's new K and V, indexable by layer: the stacked outputs or each layer's own."""
        if self._kv_per_layer:
            return ([outputs[f"k_new_{l}"] for l in range(self.n_layer)],
                    [outputs[f"v_new_{l}"] for l in range(self.n_layer)])
        return outputs["k_new"], outputs["v_new"]

    def prefill(self, ids: Iterable[int], *, all_logits: bool = True) -> np.ndarray:
        """Feed tokens in chunks (of chunk_length(position) tokens); returns their logits (n, V), or only the last
        token's (1, V) when ``all_logits`` is false (generation: saves computing and copying up to T x V floats per
        chunk). The sequence continues from self.length."""
        ids = np.asarray(list(ids), dtype=np.int32)
        C = self.max_context
        if self.length + len(ids) > C:
            raise RuntimeLiteshipError(f"{self.length + len(ids)} tokens do not fit the bundle's context of {C}")
        with large_blocks_unmapped():  # each new chunk shape re-plans prefill's arena
            return self._prefill_chunks(ids, all_logits)

    def _prefill_chunks(self, ids: np.ndarray, all_logits: bool) -> np.ndarray:
        C = self.max_context
        out = []
        s = 0
        while s < len(ids):
            start = self.length
            T = self.chunk_length(start)
            chunk = ids[s:s + T]
            n = len(chunk)
            rows = T if all_logits else 1
            if self._shared_cache:  # decode's cache is prefill's: it must hold this chunk's slots too
                self._ensure_slots(start + n)
                self._resize_prefill(self.slots, rows, T)
            else:
                self._size_prefill(start, rows, T)  # the slots this chunk attends to
            pre, S = self._prefill.inputs, self.prefill_slots
            if self._prefill_synced < start and not self._shared_cache:  # earlier tokens came through decode
                a = self._prefill_synced
                (dk, dv), (pk, pv) = self._decode_cache, self._prefill_cache
                for l in range(self.n_layer):
                    pk[l][:, a:start, :] = dk[l][:, a:start, :]
                    pv[l][:, a:start, :] = dv[l][:, a:start, :]
                self._prefill_synced = start
            embeds = pre["embeds"]  # (T, E); rows past n are padding whose outputs are ignored
            embeds[n:] = 0.0
            self.tokens.rows(chunk, embeds)
            pre["positions"][:] = np.minimum(np.arange(start, start + T), C - 1)
            if self._chunk_open:
                cache_mask = pre["cache_mask"]  # (1, S): every token of the chunk sees the filled slots
                cache_mask[:] = MASK_EMPTY
                cache_mask[0, :start] = 0.0
                pre["chunk_mask"][:] = self._chunk_mask  # (T, T)
            else:
                mask = pre["mask"]  # (T, S+T)
                mask[:, :S] = MASK_EMPTY
                mask[:, :start] = 0.0
                mask[:, S:] = self._chunk_mask
            if "rows" in pre:  # which positions of the chunk get logits: (R,)
                pre["rows"][:] = np.arange(T) if all_logits else n - 1
            self._prefill.invoke()
            o = self._prefill.outputs
            if all_logits:
                out.append(np.array(o["logits"][:n]))  # (n, V)
            elif s + n >= len(ids):
                out.append(np.array(o["logits"][n - 1:n] if self.prefill_rows == T else o["logits"][-1:]))
            self._ensure_slots(start + n)
            k_new, v_new = self._new_kv(o)
            self._write(k_new, v_new, start, n)
            self._decode.inputs["mask"][0, start:start + n] = 0.0
            self.length += n
            s += n
        return np.concatenate(out) if out else np.zeros((0, self.vocab_size), np.float32)

    def decode(self, token: int) -> np.ndarray:
        """Feed one token at position self.length; returns its logits (V,)."""
        pos = self.length
        if pos >= self.max_context:
            raise RuntimeLiteshipError(f"the context of {self.max_context} tokens is full")
        self._ensure_slots(pos + 1)  # the new token's own row is written after the step, into slot pos
        dec = self._decode.inputs
        self.tokens.rows(np.array([token]), dec["embeds"])
        dec["position"][0] = pos
        self._decode.invoke()
        o = self._decode.outputs
        self._write(o["k_new"], o["v_new"], pos, 1)
        dec["mask"][0, pos] = 0.0
        self.length += 1
        return np.array(o["logits"][0])

    def advance_empty(self, n: int) -> None:
        """Mark n more slots filled without computing them (benchmarks: a step's cost does not depend on values)."""
        if self.length + n > self.max_context:
            raise RuntimeLiteshipError(f"cannot advance past the context of {self.max_context}")
        self._ensure_slots(self.length + n)
        self._decode.inputs["mask"][0, self.length:self.length + n] = 0.0
        self.length += n


def choose_token(logits: np.ndarray, *, temperature: float, top_k: int, top_p: float,
                 rng: np.random.Generator) -> int:
    """Greedy when temperature <= 0; else sample from softmax(logits / T) restricted to top-k, then top-p."""
    if temperature <= 0:
        return int(np.argmax(logits))
    x = logits.astype(np.float64) / temperature
    if 0 < top_k < x.size:
        kth = np.partition(x, -top_k)[-top_k]
        x = np.where(x >= kth, x, -np.inf)
    p = np.exp(x - x.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, top_p) + 1)]  # smallest set reaching top_p
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(p.size, p=p))


@dataclass
class Generation:
    text: str
    token_ids: list = field(default_factory=list)
    prompt_tokens: int = 0
    finish_reason: str = "length"  # "eos" | "stop" | "length" | "context"
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


class TextGenerator:
    """Generate text from a GPT-2 bundle: ``TextGenerator(bundle).generate("Hello", max_new_tokens=20)``."""

    def __init__(self, bundle, *, threads: int | None = None, backend: str = "auto", grow_cache: bool | None = None):
        self.session = KVCacheSession(bundle, threads=threads, backend=backend, grow_cache=grow_cache)
        self.bundle = self.session.bundle
        self.config = self.bundle.config
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from liteship.runtime.tokenizer import ByteLevelBPETokenizer
            self._tokenizer = ByteLevelBPETokenizer.from_bundle(self.bundle)
        return self._tokenizer

    def _defaults(self, **given) -> dict:
        gen = self.config.get("generation") or {}
        out = {}
        for key, value in given.items():
            out[key] = gen.get(key) if value is None else value
        if given.get("temperature") is None and not gen.get("do_sample", False):
            out["temperature"] = 0.0  # the checkpoint's default is greedy
        return out

    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int | None = None, *,
                     temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                     seed: int | None = None, stop_on_eos: bool = True, truncate: bool = False,
                     result: Generation | None = None) -> Iterator[int]:
        """Yield new token ids. prefill(prompt) once (in chunks), then one decode per further token."""
        o = self._defaults(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
        max_new, C = int(o["max_new_tokens"]), self.session.max_context
        ids = list(prompt_ids)
        if not ids:
            raise RuntimeLiteshipError("the prompt is empty; GPT-2 needs at least one token to continue")
        if len(ids) >= C:
            if not truncate:
                raise RuntimeLiteshipError(
                    f"the prompt is {len(ids)} tokens; this bundle's context is {C} (pass truncate=True / --truncate "
                    "to keep its end)")
            ids = ids[-max(1, C - max_new):]
        rng = np.random.default_rng(seed)
        eos = self.config.get("eos_token_id")
        result = result if result is not None else Generation("")
        result.prompt_tokens = len(ids)
        sess = self.session
        sess.reset()
        t0 = time.perf_counter()
        logits = sess.prefill(ids, all_logits=False)[-1]
        result.prefill_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            for i in range(max_new):
                token = choose_token(logits, temperature=float(o["temperature"]), top_k=int(o["top_k"] or 0),
                                     top_p=float(o["top_p"] if o["top_p"] is not None else 1.0), rng=rng)
                if stop_on_eos and token == eos:
                    result.finish_reason = "eos"
                    return
                result.token_ids.append(token)
                yield token
                if i + 1 == max_new:
                    result.finish_reason = "length"
                    return
                if sess.length >= C:
                    result.finish_reason = "context"
                    return
                logits = sess.decode(token)
        finally:
            result.decode_seconds = time.perf_counter() - t0

    def stream(self, prompt: str, max_new_tokens: int | None = None, *, stop: Iterable[str] = (),
               result: Generation | None = None, **options) -> Iterator[str]:
        """Yield text pieces as they are generated; stops before any of ``stop`` (which is never emitted)."""
        stop = [s for s in stop if s]
        decoder = self.tokenizer.stream_decoder()
        result = result if result is not None else Generation("")
        pending = ""  # text that might be the start of a stop string
        gen = self.generate_ids(self.tokenizer.encode(prompt), max_new_tokens, result=result, **options)
        for token in gen:
            pending += decoder.push(token)
            cut = min((pending.find(s) for s in stop if s in pending), default=-1)
            if cut >= 0:
                result.finish_reason = "stop"
                gen.close()
                if pending[:cut]:
                    result.text += pending[:cut]
                    yield pending[:cut]
                return
            hold = max((_overlap(pending, s) for s in stop), default=0)
            ready, pending = pending[:len(pending) - hold], pending[len(pending) - hold:]
            if ready:
                result.text += ready
                yield ready
        pending += decoder.flush()
        if pending:
            result.text += pending
            yield pending

    def generate(self, prompt: str, max_new_tokens: int | None = None, *, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop: Iterable[str] = (), stream: Callable[[str], None] | None = None,
                 truncate: bool = False) -> Generation:
        """Continue ``prompt``; ``stream`` (if given) is called with each piece of text as it is generated."""
        result = Generation("")
        for piece in self.stream(prompt, max_new_tokens, stop=stop, result=result, temperature=temperature,
                                 top_k=top_k, top_p=top_p, seed=seed, truncate=truncate):
            if stream is not None:
                stream(piece)
        return result


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of stop."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
