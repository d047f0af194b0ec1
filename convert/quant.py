"""Quantization modes: one enum, one table from mode to converter recipe, one from mode to file suffix."""

from __future__ import annotations

import contextlib
import io
import re
from enum import Enum
from typing import Callable

from liteship.errors import ConvertError


class Quant(str, Enum):
    FP32 = "fp32"                  # no quantization
    FP16 = "fp16"                  # weights stored as float16, computed in float32 (XNNPACK may run fp16)
    DYNAMIC_INT8 = "dynamic-int8"  # int8 weights, activations quantized on the fly: no data needed
    INT8 = "int8"                  # full-integer int8, calibrated on a representative dataset
    INT8X16 = "int8x16"            # int8 weights, int16 activations: calibrated, more accurate, fewer delegates
    INT4 = "int4"                  # GPT-2: int4 weights (per channel), activations quantized to int8 on the fly

    @classmethod
    def parse(cls, text: "str | Quant") -> "Quant":
        try:
            return cls(text)
        except ValueError:
            choices = ", ".join(q.value for q in cls)
            raise ConvertError(f"unknown quantization mode {text!r}; choose one of: {choices}") from None

    @property
    def needs_calibration(self) -> bool:
        return self in (Quant.INT8, Quant.INT8X16)


# The modes a classifier (Keras, SavedModel, BiT) converts to: int4 is GPT-2's alone.
CLASSIFIER_MODES = tuple(q for q in Quant if q is not Quant.INT4)

IO_TYPES = ("float32", "int8", "uint8", "int16")


def _fp32(converter, rep) -> None:
    pass


def _fp16(converter, rep) -> None:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


def _dynamic_int8(converter, rep) -> None:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]


def _int8(converter, rep) -> None:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = rep
    # Only integer kernels: an op without one is a conversion error rather than a silent float fallback,
    # which is what an Edge TPU or a DSP needs.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


def _int4(converter, rep) -> None:
    raise ConvertError("--quant int4 is for GPT-2 (liteship convert gpt2); other models: dynamic-int8 or int8")


# One scale per row of a weight (CHANNELWISE) or per 32 weights of a row (BLOCKWISE_32); XNNPACK has kernels for
# both. Per row keeps the tied LM head a table the runtime reads rows from (runtime/token_table.py); per block
# would need a second, int8 token table in the bundle.
INT4_GRANULARITY = "CHANNELWISE"


def int4_weights(tflite: bytes) -> bytes:
    """A float32 model's weights as int4, one symmetric scale per output channel, with int8 activations quantized
    at run time (XNNPACK's dynamically quantized int4 FULLY_CONNECTED), by ai-edge-quantizer, the LiteRT quantizer.
    Applied after conversion: the TFLite converter has no int4 recipe."""
    try:
        from ai_edge_quantizer import quantizer
    except ImportError:
        raise ConvertError("--quant int4 needs ai-edge-quantizer (pip install 'liteship[convert]')") from None
    from ai_edge_quantizer import qtyping, recipe_manager

    recipes = recipe_manager.RecipeManager()
    recipes.add_dynamic_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=4,
                               granularity=getattr(qtyping.QuantGranularity, INT4_GRANULARITY))
    q = quantizer.Quantizer(bytearray(tflite))
    q.load_quantization_recipe(recipes.get_quantization_recipe())
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # sizes, progress
            return bytes(q.quantize().quantized_model)
    except Exception as exc:  # the quantizer raises ValueError/RuntimeError/KeyError for what it cannot quantize
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConvertError(f"int4 quantization failed: {first}") from None


def _int8x16(converter, rep) -> None:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = rep
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
    ]


RECIPES: dict[Quant, Callable] = {
    Quant.FP32: _fp32,
    Quant.FP16: _fp16,
    Quant.DYNAMIC_INT8: _dynamic_int8,
    Quant.INT8: _int8,
    Quant.INT8X16: _int8x16,
    Quant.INT4: _int4,
}

SUFFIXES: dict[Quant, str] = {
    Quant.FP32: "fp32",
    Quant.FP16: "fp16",
    Quant.DYNAMIC_INT8: "dyn-int8",
    Quant.INT8: "int8",
    Quant.INT8X16: "int8x16",
    Quant.INT4: "int4",
}


# --min-runtime: the oldest TFLite runtime a bundle must load on, in TensorFlow's numbering (tflite-runtime 2.14, the
# last of its wheels and the only interpreter 32-bit ARM boards have). The converter records the runtime its op
# versions need in the file (min_runtime_version); convert_saved_model checks that against the target.
#
# What each mode needs, as TensorFlow 2.21's converter writes it (measured on GPT-2 and BiT):
#   fp32 1.10 (2.9 with GPT-2's GELU), fp16 1.15, int8 2.5, int8x16 1.10;
#   dynamic-int8 2.17: dense layers get one weight scale per output channel, FULLY_CONNECTED version 12, which
#   only TFLite 2.17 and newer run. With one scale per weight matrix instead (the hybrid kernel of FULLY_CONNECTED
#   version 9, TFLite 2.3) the same model needs 2.9 (GPT-2) or 2.4 (BiT's CONV_2D version 5).
PER_CHANNEL_DENSE_SINCE = "2.17"
# The converter's switch for that is private; checked on TensorFlow 2.21 (TFLiteConverterBase).
PER_TENSOR_DENSE_ATTRIBUTE = "_experimental_disable_per_channel_quantization_for_dense_layers"
MIN_RUNTIME_PATTERN = re.compile(r"\d+\.\d+(\.\d+)?")


def parse_min_runtime(text: str | None) -> str | None:
    """A --min-runtime value such as ``2.14`` or ``2.14.0``; None stays None."""
    if text is None:
        return None
    text = str(text).strip()
    if not MIN_RUNTIME_PATTERN.fullmatch(text):
        raise ConvertError(f"--min-runtime {text!r}: give a TFLite runtime version such as 2.14")
    return text


def check_min_runtime(quant: "Quant | str", min_runtime: str | None) -> None:
    """Refuses, before any conversion, a mode that cannot promise a runtime."""
    if min_runtime is not None and Quant.parse(quant) is Quant.INT4:
        raise ConvertError(f"--min-runtime {min_runtime}: --quant int4 cannot promise a runtime (its int4 weights are "
                           "written after conversion and the file's min_runtime_version does not cover them); use "
                           "--quant dynamic-int8")


def runtime_recipe(converter, quant: Quant, min_runtime: str | None) -> None:
    """Keeps the converter to op versions that TFLite ``min_runtime`` has, where a mode has an older recipe."""
    from liteship.runtime.interpreter import version_tuple

    if min_runtime is None or quant is not Quant.DYNAMIC_INT8:
        return
    if version_tuple(min_runtime) >= version_tuple(PER_CHANNEL_DENSE_SINCE):
        return
    if not hasattr(converter, PER_TENSOR_DENSE_ATTRIBUTE):
        raise ConvertError(f"--min-runtime {min_runtime}: this TensorFlow's converter cannot quantize dense layers per "
                           f"tensor (it lacks {PER_TENSOR_DENSE_ATTRIBUTE}); use --quant fp16 or fp32")
    setattr(converter, PER_TENSOR_DENSE_ATTRIBUTE, True)


def apply_recipe(converter, quant: "Quant | str", *, representative_dataset=None, io_type: str = "float32",
                 min_runtime: str | None = None) -> None:
    """Configures a tf.lite.TFLiteConverter for ``quant``. ``io_type`` other than float32 makes the model's inputs
    and outputs integer (Edge TPU needs that) and is only meaningful for the calibrated modes. ``min_runtime``
    (``2.14``) picks the mode's recipe that the runtime of that version loads, where it has one."""
    import tensorflow as tf

    quant = Quant.parse(quant)
    check_min_runtime(quant, min_runtime)
    if io_type not in IO_TYPES:
        raise ConvertError(f"unknown input/output type {io_type!r}; choose one of: {', '.join(IO_TYPES)}")
    if quant.needs_calibration and representative_dataset is None:
        raise ConvertError(
            f"--quant {quant.value} needs calibration data (--calibration DIR_or_NPY): liteship never calibrates "
            "on random data"
        )
    if io_type != "float32":
        if not quant.needs_calibration:
            raise ConvertError(f"--io-type {io_type} needs a calibrated mode (int8 or int8x16), not {quant.value}")
        allowed = ("int16",) if quant is Quant.INT8X16 else ("int8", "uint8")
        if io_type not in allowed:
            raise ConvertError(f"--io-type {io_type} does not go with --quant {quant.value}; use {' or '.join(allowed)}")
    RECIPES[quant](converter, representative_dataset)
    runtime_recipe(converter, quant, min_runtime)
    if io_type != "float32":
        dtype = {"int8": tf.int8, "uint8": tf.uint8, "int16": tf.int16}[io_type]
        converter.inference_input_type = dtype
        converter.inference_output_type = dtype
