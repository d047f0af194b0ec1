"""Every private API of the interpreter backends that liteship uses, in one place; nothing else touches them.

liteship calls the backends' public API wherever one serves (a signature's tensor names, indices and open
dimensions come from ``runner.get_input_details()`` / ``get_output_details()``). Three jobs have no public call:

1. **Zero-copy tensors of a signature's own subgraph** (GPT-2's ``prefill`` and ``decode``), on the Interpreter of
   ai-edge-litert, tflite-runtime and tf.lite (one Python wrapper, copied into each):
   - ``runner._subgraph_index``: the subgraph a signature runs; the public API names signatures, never subgraphs.
   - ``interp._interpreter`` (the native wrapper) and its ``ResizeInputTensor``, ``AllocateTensors``, ``tensor``
     and ``Invoke``, each given that subgraph. The public ``resize_tensor_input``, ``allocate_tensors``,
     ``tensor`` and ``invoke`` reach subgraph 0 only, and a signature runner's call copies every input in and every
     output out (the whole KV cache, every decode step).
2. **The execution plan after delegation** (which ops XNNPACK took): ``interp._get_ops_details()``, for the
   tests' XNNPACK coverage and the fake benchmark_model's op profile. No public call lists ops.
3. **A LiteRT TensorBuffer over a numpy array, in the array's shape** (the compiled engine's KV cache):
   ai-edge-litert 2.3's ``TensorBuffer.create_from_host_memory`` makes rank-1 buffers only, which a shaped input
   ([H, S, hd]) refuses. The C API's ``LiteRtCreateTensorBufferFromHostMemory`` (a public, versioned symbol of the
   wheel's ``libLiteRt.so``) takes the shape; it is called through ctypes with struct layouts copied from LiteRT's C
   headers, and the result is wrapped in the PyCapsule named ``LiteRtTensorBuffer`` that ``CompiledModel.run_by_name``
   unwraps: both are private contracts.

Checked on x86-64 with ai-edge-litert 2.3.0 (1, 2, 3), tflite-runtime 2.14.0 (1, 2) and tf.lite of TensorFlow
2.21.0 (1, 2); inside the emulated boards of .ci/board-tests with ai-edge-litert 2.3.0 and tflite-runtime 2.14.0 on
aarch64 and tflite-runtime 2.14.0 on armv7l (1, 2; 3 is not used off x86-64). ``.ci/litert-newest`` runs the
runtime tests on the newest ai-edge-litert release as well, so that a rename shows in CI first.

A missing private name fails in one line naming the backend and its version (RuntimeLiteshipError), where nothing
else can serve. Where something can, it is used instead: without 3, ``host_buffers_available()`` is false and GPT-2
generation takes the interpreter engine (1).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata as md
import os

import numpy as np

from liteship.errors import RuntimeLiteshipError

CHECKED_ON = {"ai-edge-litert": "2.3.0", "tflite-runtime": "2.14.0", "tf.lite (TensorFlow)": "2.21.0"}
_CHECKED = ", ".join(f"{name} {version}" for name, version in CHECKED_ON.items())

_WRAPPER_CALLS = ("ResizeInputTensor", "AllocateTensors", "tensor", "Invoke")


def _backend(interp) -> str:
    return getattr(interp, "liteship_backend", None) or type(interp).__module__


def _missing(interp, what: str) -> RuntimeLiteshipError:
    return RuntimeLiteshipError(f"{_backend(interp)}: its interpreter has no {what}, a private API liteship uses "
                                f"(checked on {_CHECKED}); install one of those")


def _private(obj, name: str, interp, what: str | None = None):
    try:
        return getattr(obj, name)
    except AttributeError:
        raise _missing(interp, what or name) from None


class SignatureSubgraph:
    """The subgraph that signature ``runner`` of ``interp`` runs, driven directly (job 1): resize its inputs,
    allocate it, numpy views into its tensors' own memory, invoke it. A view stays valid until the next
    ``allocate()``, which may move every tensor of the subgraph."""

    def __init__(self, interp, runner):
        self._interp = interp  # its wrapper is looked up per call: holding it would fail allocate_tensors' check
        self.index = _private(runner, "_subgraph_index", interp, "signature runner _subgraph_index")
        wrapper = _private(interp, "_interpreter", interp, "native wrapper _interpreter")
        for name in _WRAPPER_CALLS:
            _private(wrapper, name, interp, f"per-subgraph _interpreter.{name}")

    def resize_input(self, tensor: int, shape: tuple) -> None:
        """Takes effect (and invalidates the views) at the next allocate()."""
        self._interp._interpreter.ResizeInputTensor(tensor, np.array(shape, np.int32), False, self.index)

    def allocate(self) -> None:
        try:
            self._interp._interpreter.AllocateTensors(self.index)
        except TypeError:  # an old interpreter whose calls take no subgraph
            raise self._no_subgraphs() from None

    def view(self, tensor: int) -> np.ndarray:
        """A numpy array over the tensor's own memory (the interpreter is its base), valid until allocate()."""
        try:
            return self._interp._interpreter.tensor(self._interp, tensor, self.index)
        except TypeError:  # an old interpreter whose tensor() has no subgraph argument
            raise self._no_subgraphs() from None

    def _no_subgraphs(self) -> RuntimeLiteshipError:
        return RuntimeLiteshipError(f"{_backend(self._interp)} cannot give per-signature tensor views; GPT-2 "
                                    "generation needs ai-edge-litert (pip install ai-edge-litert)")

    def invoke(self) -> None:
        self._interp._interpreter.Invoke(self.index)


def ops_details(interp) -> list[dict]:
    """The interpreter's nodes after allocate_tensors (job 2): the model's own, plus one DELEGATE node per
    partition a delegate took; each {"index", "op_name", "inputs", "outputs", ...}."""
    return _private(interp, "_get_ops_details", interp, "_get_ops_details() (its op list)")()


class _Layout(ctypes.Structure):  # LiteRtLayout (litert/c/litert_layout.h): rank:7 and has_strides:1 in one uint
    _fields_ = [("rank_bits", ctypes.c_uint32), ("dimensions", ctypes.c_int32 * 8), ("strides", ctypes.c_uint32 * 8)]


class _RankedTensorType(ctypes.Structure):  # LiteRtRankedTensorType (litert/c/litert_model_types.h), 72 bytes
    _fields_ = [("element_type", ctypes.c_int), ("layout", _Layout)]


_ELEMENT_TYPES = {"float32": 1, "int32": 2, "int8": 9}  # LiteRtElementType = TfLiteType values


@functools.lru_cache(maxsize=None)
def _litert_c():
    """LiteRT's C library as shipped in the ai-edge-litert wheel, or None when it (or a symbol) is missing."""
    try:
        import ai_edge_litert

        lib = ctypes.CDLL(os.path.join(os.path.dirname(ai_edge_litert.__file__), "libLiteRt.so"))
        create, destroy = lib.LiteRtCreateTensorBufferFromHostMemory, lib.LiteRtDestroyTensorBuffer
    except (ImportError, OSError, AttributeError):
        return None
    if ctypes.sizeof(_RankedTensorType) != 72:
        return None
    create.argtypes = [ctypes.POINTER(_RankedTensorType), ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                       ctypes.POINTER(ctypes.c_void_p)]
    create.restype = ctypes.c_int
    destroy.argtypes = [ctypes.c_void_p]
    destroy.restype = None
    return lib


def _litert_version() -> str:
    try:
        return md.version("ai-edge-litert")
    except md.PackageNotFoundError:
        return "(not installed)"


def host_buffers_available() -> bool:
    """Whether HostTensorBuffer can be made here (job 3); without it the compiled engine is not used."""
    return _litert_c() is not None


_new_capsule = ctypes.pythonapi.PyCapsule_New
_new_capsule.restype = ctypes.py_object
_new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_CAPSULE_NAME = ctypes.c_char_p(b"LiteRtTensorBuffer")  # what ai_edge_litert's CompiledModel.run_by_name unwraps


class HostTensorBuffer:
    """A LiteRT TensorBuffer over a numpy array's own memory, in the array's shape (job 3): LiteRT reads and writes
    the array in place. ``capsule`` is what CompiledModel.run_by_name takes; keep this object (and the array) alive
    as long as the model may use it. The array must be C-contiguous and 64-byte aligned."""

    def __init__(self, array):
        lib = _litert_c()
        if lib is None:
            raise RuntimeLiteshipError(f"ai-edge-litert {_litert_version()}: its libLiteRt.so has no "
                                       "LiteRtCreateTensorBufferFromHostMemory (checked on ai-edge-litert "
                                       f"{CHECKED_ON['ai-edge-litert']})")
        if not array.flags.c_contiguous or array.ctypes.data % 64:
            raise ValueError("a host tensor buffer needs a C-contiguous, 64-byte aligned array")
        kind = _RankedTensorType(element_type=_ELEMENT_TYPES[array.dtype.name])
        kind.layout.rank_bits = array.ndim  # has_strides (bit 7) stays 0
        for i, d in enumerate(array.shape):
            kind.layout.dimensions[i] = d
        handle = ctypes.c_void_p()
        status = lib.LiteRtCreateTensorBufferFromHostMemory(ctypes.byref(kind), array.ctypes.data, array.nbytes,
                                                            None, ctypes.byref(handle))
        if status:
            raise RuntimeLiteshipError(f"LiteRT could not wrap a {array.shape} buffer (status {status})")
        self._lib, self._handle, self.array = lib, handle.value, array
        self.capsule = _new_capsule(handle.value, _CAPSULE_NAME, None)

    def __del__(self):
        if getattr(self, "_handle", None):
            self._lib.LiteRtDestroyTensorBuffer(self._handle)  # the model holds its own reference while it uses it
            self._handle = None
