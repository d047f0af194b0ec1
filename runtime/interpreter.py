"""One way to get a TFLite interpreter, whichever runtime the device has.

Backends, in the order ``auto`` tries them:
- ``litert``: ai-edge-litert, the maintained successor of TensorFlow Lite.
- ``tflite-runtime``: the older standalone wheel (stops at 2.14, Python <= 3.11, numpy 1.x); common on boards.
- ``tf``: ``tf.lite.Interpreter`` from a full TensorFlow, deprecated, only if nothing else is installed. It is
  imported here lazily and only when chosen, so importing liteship.runtime never pulls TensorFlow in.

All three share the Interpreter API (get_signature_runner, allocate_tensors, tensor views), so callers use the
returned object directly; ``interp.liteship_backend`` says which one it is.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import importlib
import importlib.metadata as md
import importlib.util
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from liteship.errors import RuntimeLiteshipError
from liteship.runtime.tflite_file import read_model


@dataclass(frozen=True)
class Backend:
    name: str
    module: str        # where Interpreter and load_delegate live
    distribution: str  # for the version string


BACKENDS = {
    "litert": Backend("litert", "ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite-runtime": Backend("tflite-runtime", "tflite_runtime.interpreter", "tflite-runtime"),
    "tf": Backend("tf", "tensorflow.lite", "tensorflow"),
}
AUTO_ORDER = ("litert", "tflite-runtime", "tf")

# Where the Edge TPU runtime library lives per platform, for `--delegate edgetpu`.
EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


# Backends numbered like TensorFlow, the numbering of a .tflite's min_runtime_version. ai-edge-litert numbers its
# releases its own way (1.x, 2.x) with no published mapping to TensorFlow's, so its version is not compared.
TF_NUMBERED_BACKENDS = ("tflite-runtime", "tf")


def version_tuple(version: str) -> tuple[int, ...]:
    """(2, 14, 0) from "2.14.0", "2.14.0rc1" or "2.14": the leading numeric parts, padded to three so that 2.17
    and 2.17.0 compare equal; () for text without a leading number."""
    parts = []
    for piece in version.split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) < len(piece):
            break
    return tuple(parts + [0] * (3 - len(parts))) if parts else ()


def runtime_too_old(needed: str | None, backend: str, version: str | None) -> str | None:
    """Why ``backend`` ``version`` cannot load a model whose min_runtime_version is ``needed``, in one line
    (None when it can, or when the versions cannot be compared). One rule for the device and for the host that
    refuses before pushing."""
    if not needed or not version or backend not in TF_NUMBERED_BACKENDS:
        return None
    have, want = version_tuple(version), version_tuple(needed)
    if not have or not want or have >= want:
        return None
    target = ".".join(map(str, have[:2]))
    return (f"needs TFLite runtime {needed} or newer (the file's min_runtime_version), but {backend} {version} "
            f"would run it: pip install ai-edge-litert (64-bit ARM and x86), or convert the model for that runtime "
            f"(liteship convert ... --min-runtime {target})")


# tflite-runtime on ARM (measured under qemu-user: 2.14 on aarch64 and on armv7l, with and without XNNPACK): a
# full-integer FULLY_CONNECTED resized to a batch of 2 or more kills the process (SIGSEGV), while batch 1 works.
# Until a real board says otherwise, whoever batches rows runs them one at a time there.
ARM_MACHINES = ("aarch64", "arm64", "armv7l", "armv8l", "armv6l")


def batch_crashes(backend: str, machine: str, model) -> bool:
    """Whether running ``model`` (a TFLiteModel) on ``backend`` (``interp.liteship_backend``, e.g.
    "tflite-runtime 2.14.0") on ``machine`` (platform.machine()) with a batch above 1 crashes: an int8
    FULLY_CONNECTED under tflite-runtime on ARM."""
    if not backend.startswith("tflite-runtime") or machine not in ARM_MACHINES:
        return False
    for sg in model.subgraphs:
        for code, inputs in zip(sg.op_codes, sg.op_inputs):
            if model.operator_names[code] == "FULLY_CONNECTED" and inputs and sg.tensors[inputs[0]].dtype == "int8":
                return True
    return False


def one_row_at_a_time(interpreter, model_path) -> bool:
    """batch_crashes for an interpreter from create_interpreter, on this machine."""
    return batch_crashes(getattr(interpreter, "liteship_backend", ""), platform.machine(), read_model(model_path))


def _import(backend: Backend):
    if backend.name == "tf":
        return importlib.import_module("tensorflow").lite
    return importlib.import_module(backend.module)


def _version(backend: Backend) -> str:
    try:
        return md.version(backend.distribution)
    except md.PackageNotFoundError:
        return "unknown"


def available_backends() -> list[str]:
    """Backends importable here (without importing TensorFlow just to find out)."""
    found = []
    for name in AUTO_ORDER:
        module = "tensorflow" if name == "tf" else BACKENDS[name].module.split(".")[0]
        if importlib.util.find_spec(module) is not None:
            found.append(name)
    return found


def resolve_backend(name: str = "auto"):
    """(Backend, module) for ``name``; auto honours $LITESHIP_BACKEND, else picks the first importable one."""
    if name == "auto":
        name = os.environ.get("LITESHIP_BACKEND") or "auto"
    if name != "auto" and name not in BACKENDS:
        raise RuntimeLiteshipError(f"unknown interpreter backend {name!r}; choose auto, {', '.join(BACKENDS)}")
    for candidate in (AUTO_ORDER if name == "auto" else (name,)):
        backend = BACKENDS[candidate]
        try:
            return backend, _import(backend)
        except ImportError:
            continue
    if name == "auto":
        raise RuntimeLiteshipError(
            "no TFLite interpreter is installed: pip install ai-edge-litert (or tflite-runtime on older boards)")
    raise RuntimeLiteshipError(f"interpreter backend {name!r} is not installed here")


def _load_delegate(module, spec: str, options: dict | None):
    library = EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1") if spec == "edgetpu" else spec
    try:
        return module.load_delegate(library, options or {})
    except (ValueError, OSError, RuntimeError) as exc:
        hint = " (install the Edge TPU runtime, e.g. libedgetpu1-std, and plug the device in)" if spec == "edgetpu" \
            or "edgetpu" in spec else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeLiteshipError(f"cannot load delegate {library}: {first}{hint}") from None


def create_interpreter(model_path: str | os.PathLike, *, backend: str = "auto", num_threads: int | None = None,
                       delegate: str | None = None, delegate_options: dict | None = None,
                       use_xnnpack: bool = True):
    """An interpreter for ``model_path`` with tensors not yet allocated.

    ``delegate`` is a shared library path or ``edgetpu``; ``use_xnnpack=False`` turns off the default XNNPACK
    delegate (to measure what it buys). A model the backend cannot load raises RuntimeLiteshipError in one line."""
    chosen, module = resolve_backend(backend)
    path = Path(model_path)
    if not path.is_file():
        raise RuntimeLiteshipError(f"{path}: no such model file")
    # tflite-runtime 2.14 crashes the process on a cut-off file instead of raising: check the flatbuffer's
    # structure ourselves first (a few milliseconds; weights are not read).
    too_old = runtime_too_old(read_model(path).min_runtime_version(), chosen.name, _version(chosen))
    if too_old:  # tflite-runtime would fail later with "Didn't find op for builtin opcode ... version N"
        raise RuntimeLiteshipError(f"{path}: {too_old}")
    kwargs: dict = {"model_path": str(path)}
    if num_threads is not None:
        if num_threads < 1:
            raise RuntimeLiteshipError(f"--threads must be at least 1, not {num_threads}")
        kwargs["num_threads"] = num_threads
    delegates = []
    if delegate:
        delegates.append(_load_delegate(module, delegate, delegate_options))
        kwargs["experimental_delegates"] = delegates
    if not use_xnnpack:
        kwargs["experimental_op_resolver_type"] = module.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES \
            if chosen.name == "tf" else module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interp = module.Interpreter(**kwargs)
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeLiteshipError(f"{path}: the {chosen.name} interpreter cannot load it: {first}") from None
    interp.liteship_backend = f"{chosen.name} {_version(chosen)}"
    interp.liteship_delegates = [delegate] if delegate else []
    interp.liteship_xnnpack = use_xnnpack
    return interp


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Sends what native code writes to stderr (TensorFlow's MLIR diagnostics and quantizer chatter, LiteRT's
    INFO lines about accelerators it looked for) to a temporary file for the duration, so users see liteship's
    output and one-line errors only. Set LITESHIP_VERBOSE=1 to see it."""
    if os.environ.get("LITESHIP_VERBOSE"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def compiled_model_available(backend: str = "auto") -> bool:
    """Whether LiteRT's CompiledModel API, with an XNNPACK weight cache option, is what ``backend`` resolves to.
    (ai-edge-litert 2.x; tflite-runtime and tf.lite have only the Interpreter.)

    Only on x86-64, where it was checked. On aarch64, ai-edge-litert 2.3's CompiledModel dies of SIGILL (an illegal
    instruction) in Environment.create on a Cortex-A72, a Raspberry Pi 4's core (seen on the emulated board): a
    crash no fallback can catch, so other machines keep the Interpreter engine."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        chosen, _ = resolve_backend(backend)
    except RuntimeLiteshipError:
        return False
    if chosen.name != "litert":
        return False
    try:  # without importing compiled_model: that creates LiteRT's environment (and its exit-time log lines)
        if importlib.util.find_spec("ai_edge_litert.compiled_model") is None:
            return False
        from ai_edge_litert.cpu_options import CpuOptions
    except ImportError:
        return False
    return "xnnpack_weight_cache_path" in getattr(CpuOptions, "__dataclass_fields__", {}) and _litert_c() is not None


class _Layout(ctypes.Structure):  # LiteRtLayout (litert/c/litert_layout.h): rank:7 and has_strides:1 in one uint
    _fields_ = [("rank_bits", ctypes.c_uint32), ("dimensions", ctypes.c_int32 * 8), ("strides", ctypes.c_uint32 * 8)]


class _RankedTensorType(ctypes.Structure):  # LiteRtRankedTensorType (litert/c/litert_model_types.h), 72 bytes
    _fields_ = [("element_type", ctypes.c_int), ("layout", _Layout)]


_ELEMENT_TYPES = {"float32": 1, "int32": 2, "int8": 9}  # LiteRtElementType = TfLiteType values


@functools.lru_cache(maxsize=None)
def _litert_c():
    """LiteRT's C library as shipped in the ai-edge-litert wheel, or None. The one private door this module opens
    besides the interpreter wrapper: the Python API of ai-edge-litert 2.3 makes host-memory TensorBuffers rank-1
    only, which a shaped input (the KV cache [H, S, hd]) refuses; the C API's LiteRtCreateTensorBufferFromHostMemory
    (a public, versioned symbol) takes the shape. Checked on ai-edge-litert 2.3.0, x86-64."""
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


_new_capsule = ctypes.pythonapi.PyCapsule_New
_new_capsule.restype = ctypes.py_object
_new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_CAPSULE_NAME = ctypes.c_char_p(b"LiteRtTensorBuffer")  # what ai_edge_litert's CompiledModel.run_by_name unwraps


class HostTensorBuffer:
    """A LiteRT TensorBuffer over a numpy array's own memory, in the array's shape: LiteRT reads and writes the
    array in place. ``capsule`` is what CompiledModel.run_by_name takes; keep this object (and the array) alive
    as long as the model may use it. The array must be C-contiguous and 64-byte aligned."""

    def __init__(self, array):
        lib = _litert_c()
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


def create_compiled_model(model_path: str | os.PathLike, *, num_threads: int, weight_cache: str | os.PathLike | None):
    """A LiteRT CompiledModel on the CPU (XNNPACK) whose packed weights live in the file ``weight_cache``: built
    on the first start, memory-mapped on later ones, and shared by every signature, so nothing is packed twice
    and the model's own weights are never paged in to be packed. Checked on ai-edge-litert 2.3."""
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.cpu_options import CpuOptions
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import Options

    if num_threads < 1:
        raise RuntimeLiteshipError(f"--threads must be at least 1, not {num_threads}")
    options = Options(hardware_accelerators=HardwareAccelerator.CPU,
                      cpu_options=CpuOptions(num_threads=num_threads,
                                             xnnpack_weight_cache_path=str(weight_cache or "")))
    try:
        with native_stderr_captured():
            model = CompiledModel.from_file(str(model_path), options=options, environment=_litert_environment())
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeLiteshipError(f"{model_path}: LiteRT cannot compile it: {first}") from None
    if weight_cache:
        drop_resident_pages(model_path)
    return model


_MADV_DONTNEED = 4  # linux/mman.h; the same number on every Linux architecture


def drop_resident_pages(path: str | os.PathLike) -> int:
    """Give back the pages of this process's read-only mappings of ``path`` (its RSS; the kernel's page cache
    keeps them), and return how many bytes the mappings span. Compiling a model with a weight cache leaves ~45 MiB
    of a 122 MiB int8 model resident (pages around the start of every weight, read while the model is loaded),
    yet nothing reads those weights afterwards: XNNPACK runs on the packed copies in the cache file. A page that
    is read again later simply faults back in, so this is only ever a saving. Linux only (/proc/self/maps)."""
    try:
        target = os.path.realpath(path)
        with open("/proc/self/maps") as maps:
            spans = []
            for line in maps:
                fields = line.split(maxsplit=5)
                # read-only mappings only: dropping a private page someone wrote would lose the write
                if len(fields) == 6 and fields[5].rstrip("\n") == target and "w" not in fields[1]:
                    lo, hi = (int(x, 16) for x in fields[0].split("-"))
                    spans.append((lo, hi - lo))
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for start, length in spans:
        libc.madvise(start, length, _MADV_DONTNEED)
    return sum(length for _, length in spans)


@functools.lru_cache(maxsize=None)
def _litert_environment():
    """One LiteRT environment per process, shared by every compiled model (creating one looks for accelerators
    and logs each on stderr). It lives until the process exits; LiteRT logs INFO lines on stderr when it is
    destroyed then, so fd 2 goes to a sink once Python's own exit handlers have run (LITESHIP_VERBOSE=1 keeps
    them)."""
    import ai_edge_litert
    from ai_edge_litert.environment import Environment, EnvironmentOptions

    with native_stderr_captured():
        env = Environment.create(options=EnvironmentOptions(runtime_path=os.path.dirname(ai_edge_litert.__file__)))
    if not os.environ.get("LITESHIP_VERBOSE"):
        def sink():
            sys.stderr.flush()
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)

        atexit.register(sink)
    return env


def backend_version(backend: str = "auto") -> str:
    """'litert 2.3.0' etc.: what a cache of the backend's own artefacts must be keyed by."""
    chosen, _ = resolve_backend(backend)
    return f"{chosen.name} {_version(chosen)}"
