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

import importlib
import importlib.util
import importlib.metadata as md
import os
import platform
from dataclasses import dataclass
from pathlib import Path

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


def _version_tuple(version: str) -> tuple[int, ...]:
    """(2, 14, 0) from "2.14.0" or "2.14.0rc1"; the leading numeric parts only."""
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
    return tuple(parts)


def runtime_too_old(needed: str | None, backend: str, version: str | None) -> str | None:
    """Why ``backend`` ``version`` cannot load a model whose min_runtime_version is ``needed``, in one line
    (None when it can, or when the versions cannot be compared). One rule for the device and for the host that
    refuses before pushing."""
    if not needed or not version or backend not in TF_NUMBERED_BACKENDS:
        return None
    have, want = _version_tuple(version), _version_tuple(needed)
    if not have or not want or have >= want:
        return None
    return (f"needs TFLite runtime {needed} or newer (the file's min_runtime_version), but {backend} {version} "
            f"would run it: pip install ai-edge-litert (64-bit ARM and x86), or convert the model for that runtime")


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
