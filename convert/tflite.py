"""SavedModel / Keras -> .tflite bytes, with the quantization recipe applied and op coverage reported."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from liteship.convert.quant import Quant, apply_recipe
from liteship.errors import ConvertError
from liteship.runtime.files import work_dir
from liteship.runtime.interpreter import native_stderr_captured
from liteship.runtime.tflite_file import read_model

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
TFLITE_FILE_IDENTIFIER = b"TFL3"  # the file_identifier of TensorFlow Lite's schema.fbs


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _release_free_heap() -> None:
    """Give freed native heap back to the OS (glibc's malloc_trim); a no-op where libc is not glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _lean_object_to_bytearray(model_object, extra_buffer=b""):
    """tensorflow.lite.tools.flatbuffer_utils.convert_object_to_bytearray with one copy of the model in memory.

    The original starts its builder at 1 KiB and lets it double (holding the old and new buffer at once), then
    copies the result twice more (Output() slice, bytes()): about 3.5x the model's size at its peak, on top of the
    converter's own copy. Sizing the builder from the buffers' byte count up front and copying out through a
    memoryview keeps it near 2x."""
    import flatbuffers

    data_bytes = sum(b.data.nbytes for b in (model_object.buffers or []) if getattr(b.data, "nbytes", None))
    # + room for the graph itself (it still grows if short); a flatbuffer cannot pass 2 GiB either way
    builder = flatbuffers.Builder(min(data_bytes + (16 << 20), flatbuffers.Builder.MAX_BUFFER_SIZE))
    root = model_object.Pack(builder)
    builder.Finish(root, file_identifier=TFLITE_FILE_IDENTIFIER)
    out = bytes(memoryview(builder.Bytes)[builder.Head():])
    del builder
    return out + extra_buffer if extra_buffer else out


@dataclass
class LeanRun:
    """What lean_converter_memory did: heap trims before buffer de-duplication, and models written by the lean
    serializer. Both stay 0 when TensorFlow renamed its internals and its own path ran."""

    trims: int = 0
    serialized: int = 0


@contextlib.contextmanager
def lean_converter_memory() -> Iterator[LeanRun]:
    """Lowers TFLiteConverter.convert()'s peak memory, which for a 500 MB model is set by its Python post-processing
    (buffer de-duplication and conversion metadata each unpack the model to objects and re-serialize it) on top
    of the heap the MLIR converter freed but glibc kept. Patches two TensorFlow internals for the duration;
    if a TensorFlow release renames them, conversion works as before, only with the higher peak.
    Yields a LeanRun that counts what the patched functions did."""
    run = LeanRun()
    try:
        from tensorflow.lite.python import lite
        from tensorflow.lite.tools import flatbuffer_utils
    except ImportError:
        yield run
        return
    dedup = getattr(lite, "_deduplicate_readonly_buffers", None)
    serialize = getattr(flatbuffer_utils, "convert_object_to_bytearray", None)
    if dedup is None or serialize is None:
        yield run
        return

    def dedup_after_trim(model):
        _release_free_heap()  # the MLIR converter is done; its freed heap would otherwise add to the next peak
        run.trims += 1
        return dedup(model)

    def lean_serialize(model_object, extra_buffer=b""):
        out = _lean_object_to_bytearray(model_object, extra_buffer)
        run.serialized += 1
        return out

    lite._deduplicate_readonly_buffers = dedup_after_trim
    flatbuffer_utils.convert_object_to_bytearray = lean_serialize
    try:
        yield run
    finally:
        lite._deduplicate_readonly_buffers = dedup
        flatbuffer_utils.convert_object_to_bytearray = serialize


@contextlib.contextmanager
def calibration_edited(edit: Callable[[bytes], bytes]) -> Iterator[list]:
    """While active, the converter's calibrated model (the float .tflite with each tensor's calibrated min and max,
    convert/calibrated_ranges.py) passes through `edit` before the int8 quantizer reads it. Patches TensorFlow's
    Calibrator.calibrate (tensorflow.lite.python.optimize.calibrator, private), which on TensorFlow 2.21 (checked)
    the int8 recipe calls once and the MLIR quantizer then reads; the int16-activation recipe never calls it
    (it calibrates and quantizes in one native call). Yields a list with one entry per edit made, so that a caller
    can refuse a conversion the edit did not reach."""
    from tensorflow.lite.python.optimize import calibrator

    original = calibrator.Calibrator.calibrate
    edits: list = []

    def calibrate(self, dataset_gen):
        result = edit(original(self, dataset_gen))
        edits.append(True)
        return result

    calibrator.Calibrator.calibrate = calibrate
    try:
        yield edits
    finally:
        calibrator.Calibrator.calibrate = original


def use_buffer_offsets(converter) -> None:
    """Has the converter write the weights after the flatbuffer, at 64-bit file offsets (schema.fbs Buffer.offset
    and .size), the layout of models past the flatbuffer's 2 GiB limit; it also skips the Python post-processing
    (buffer de-duplication, conversion metadata) that would unpack the whole model into objects. A private
    attribute of TFLiteConverter, checked on TensorFlow 2.21; the layout is read by ai-edge-litert 2.3 (checked)."""
    if not hasattr(converter, "_experimental_use_buffer_offset"):
        raise ConvertError("this TensorFlow's converter cannot write weights at file offsets (models over 1 GiB "
                           "need a newer TensorFlow)")
    converter._experimental_use_buffer_offset = True


def unsupported_ops(message: str) -> list[str]:
    """Op names from the converter's 'ops are not supported' error, e.g. ['tf.Erfinv']."""
    ops = re.findall(r"'(tf\.[A-Za-z0-9_]+)'", message) or re.findall(r"\b(tf\.[A-Z][A-Za-z0-9_]+)\b", message)
    return sorted(set(ops))


def check_saved_model(path: Path) -> None:
    if not path.exists():
        raise ConvertError(f"{path} does not exist")
    if not path.is_dir() or not ((path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()):
        raise ConvertError(f"{path} is not a SavedModel folder (no saved_model.pb)")


def saved_model_signature(path: Path, signature_key: str | None = None) -> tuple[str, dict]:
    """(signature key, input TensorSpec dict of its single input) of a SavedModel. The dict also holds
    ``output_classes``: the last dimension of a single [batch, N] output, else None."""
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TF raises many types for a damaged SavedModel
        raise ConvertError(f"{path}: cannot load the SavedModel: {_first_line(exc)}") from None
    keys = list(loaded.signatures.keys())
    if not keys:
        raise ConvertError(f"{path}: the SavedModel has no signatures to convert")
    key = signature_key or ("serving_default" if "serving_default" in keys else keys[0])
    if key not in keys:
        raise ConvertError(f"{path}: no signature {key!r}; it has: {', '.join(keys)}")
    fn = loaded.signatures[key]
    specs = fn.structured_input_signature[1]
    if len(specs) != 1:
        inputs = {}
    else:
        (name, spec), = specs.items()
        inputs = {"name": name, "shape": [-1 if d is None else int(d) for d in spec.shape],
                  "dtype": spec.dtype.name}
        outputs = fn.structured_outputs
        outputs = list(outputs.values()) if isinstance(outputs, dict) else [outputs]
        shape = getattr(outputs[0], "shape", None) if len(outputs) == 1 else None
        inputs["output_classes"] = int(shape[-1]) if shape is not None and shape.rank == 2 and shape[-1] else None
    return key, inputs


def convert_saved_model(saved_model_dir: str | os.PathLike, quant: "Quant | str", *,
                        signature_keys: list[str] | None = None,
                        representative_dataset: Callable | None = None, io_type: str = "float32",
                        allow_tf_ops: bool = False, configure: Callable | None = None,
                        min_runtime: str | None = None, calibrated_edit: Callable[[bytes], bytes] | None = None
                        ) -> tuple[bytes, dict]:
    """Converts a SavedModel. Returns the .tflite bytes and a report (seconds, size, op counts, flex ops, and the
    runtime the file needs: ``runtime`` = {"target": min_runtime, "min_runtime_version": what the file records}).

    Without ``allow_tf_ops`` an op with no TFLite builtin is a ConvertError naming it; with it, the op is kept as a
    Flex (SELECT_TF_OPS) op and the report lists it: the runtime then needs the Flex delegate.
    ``min_runtime`` (e.g. ``2.14``) converts with the mode's recipe for that runtime and refuses a result that
    needs a newer one. ``calibrated_edit`` edits the calibrated model before int8 quantization
    (calibration_edited); a conversion that does not calibrate raises then."""
    import tensorflow as tf

    path = Path(saved_model_dir)
    check_saved_model(path)
    quant = Quant.parse(quant)
    t0 = time.perf_counter()
    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(path), signature_keys=signature_keys)
    except Exception as exc:
        raise ConvertError(f"{path}: cannot load the SavedModel: {_first_line(exc)}") from None
    apply_recipe(converter, quant, representative_dataset=representative_dataset, io_type=io_type,
                 min_runtime=min_runtime)
    if allow_tf_ops:
        ops = set(converter.target_spec.supported_ops or [tf.lite.OpsSet.TFLITE_BUILTINS])
        converter.target_spec.supported_ops = ops | {tf.lite.OpsSet.SELECT_TF_OPS}
    if configure is not None:
        configure(converter)
    try:
        edited = calibration_edited(calibrated_edit) if calibrated_edit else contextlib.nullcontext([])
        with native_stderr_captured(), lean_converter_memory(), edited as edits:
            data = converter.convert()
    except ConvertError:  # from calibrated_edit, already one line naming what is wrong
        raise
    except Exception as exc:  # ConverterError, ValueError, RuntimeError from MLIR
        message = str(exc)
        ops = unsupported_ops(message)
        if ops and allow_tf_ops:
            raise ConvertError(f"{path}: ops TFLite cannot run, even as Flex ops: {', '.join(ops)}") from None
        if ops:
            raise ConvertError(
                f"{path}: ops with no TFLite builtin: {', '.join(ops)} (pass --allow-tf-ops to keep them as Flex ops; "
                "the device then needs the Flex delegate)"
            ) from None
        if "representative" in message.lower() or "calibrat" in message.lower():
            raise ConvertError(f"{path}: calibration failed: {_first_line(exc)}") from None
        raise ConvertError(f"{path}: conversion failed: {_first_line(exc)}") from None
    if calibrated_edit is not None and len(edits) != 1:
        raise ConvertError(f"{path}: --quant {quant.value}: the converter did not pass through the calibration step "
                           "the quantization ranges are set in (checked on TensorFlow 2.21)")
    info = read_model(data)
    needed = info.min_runtime_version()
    check_runtime_target(info, min_runtime, f"--quant {quant.value}")  # the option, not a temporary SavedModel
    counts = info.op_counts()
    flex = sorted(name.split(":", 1)[1] for name in counts if name.startswith("CUSTOM:Flex"))
    if flex:
        print(f"warning: the model keeps TensorFlow ops {', '.join(flex)}: the device needs the Flex delegate "
              "(tensorflow-lite-select-tf-ops); XNNPACK and the Edge TPU will not run them", file=sys.stderr)
    report = {"seconds": round(time.perf_counter() - t0, 3), "size_bytes": len(data), "op_counts": counts,
              "flex_ops": flex, "quantization": quant.value, "io_type": io_type,
              "runtime": {"target": min_runtime, "min_runtime_version": needed}}
    return data, report


def check_runtime_target(model, min_runtime: str | None, label: str) -> None:
    """Refuses a converted model (a TFLiteModel) that needs a newer TFLite runtime than ``min_runtime``."""
    from liteship.runtime.interpreter import version_tuple

    if min_runtime is None:
        return
    needed = model.min_runtime_version()
    if needed is None:
        raise ConvertError(f"{label}: --min-runtime {min_runtime}: the converted file does not say which runtime it "
                           "needs (no min_runtime_version)")
    if version_tuple(needed) > version_tuple(min_runtime):
        newest = ", ".join(f"{name} v{version}" for name, version in model.newest_op_versions())
        raise ConvertError(f"{label}: --min-runtime {min_runtime}: the converted model needs TFLite runtime {needed} "
                           f"(newest op versions: {newest}); try --quant fp16 or fp32")


def load_keras_model(path: Path):
    """Loads a Keras 3 (.keras/.h5) or Keras 2 (tf_keras .h5 or SavedModel) model file."""
    if not path.exists():
        raise ConvertError(f"{path} does not exist")
    if path.suffix not in KERAS_SUFFIXES:
        raise ConvertError(f"{path}: expected a Keras model file ({', '.join(KERAS_SUFFIXES)})")
    errors = []
    loaders = []
    import keras  # Keras 3 is what TensorFlow 2.21 ships as tf.keras

    loaders.append(("keras", lambda: keras.saving.load_model(str(path), compile=False)))
    if path.suffix != ".keras":
        import tf_keras

        loaders.append(("tf_keras", lambda: tf_keras.models.load_model(str(path), compile=False)))
    for name, load in loaders:
        try:
            return load()
        except Exception as exc:
            errors.append(f"{name}: {_first_line(exc)}")
    raise ConvertError(f"{path}: not a loadable Keras model ({'; '.join(errors)})")


def export_keras_to_saved_model(model, out_dir: Path) -> None:
    """Writes a SavedModel with a serving_default signature for a Keras 3 or tf_keras model."""
    import tensorflow as tf

    if hasattr(model, "export") and type(model).__module__.startswith("keras"):
        model.export(str(out_dir), verbose=False)
    else:
        tf.saved_model.save(model, str(out_dir))


@contextlib.contextmanager
def keras_as_saved_model(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary SavedModel made from a Keras model file; removed afterwards."""
    model = load_keras_model(Path(path))
    tmp = work_dir("keras")  # named with the pid; a later run sweeps it if this one is killed
    try:
        export_keras_to_saved_model(model, tmp / "saved_model")
        yield tmp / "saved_model"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
