"""Give chosen tensors of a calibrated model the ranges quantization-aware training learned, before int8.

The int8 converter first calibrates: it runs the float .tflite on the representative images and records each
tensor's min and max in the file (QuantizationParameters.min/max); the quantizer then turns those into int8
scales and zero points. `set_ranges` edits that calibrated file, so the tensors named by a range get it and every
other tensor keeps its calibration. liteship's Keras layers do not map to .tflite tensors by name (the converter
fuses and renames ops), so a tensor is found by its value: the float file is run on one probe image with every
tensor kept, and a range goes to each tensor that holds the values the Keras model computes there (a RESHAPE's
output holds the same values as its input, and both get the range). Ops that int8 requires to keep their input's
scale (padding, max-pool, reshapes) pass a range on to their output, so that the quantizer does not have to choose
between a learned range and a calibrated one.
"""

from __future__ import annotations

import numpy as np

from liteship.errors import ConvertError
from liteship.runtime._schema_names import BUILTIN_OPERATORS

# An int8 op whose output must have its input's scale: a range set on the input is set on the output too.
SAME_SCALE_OPS = {"PAD", "PADV2", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "MAX_POOL_2D"}
# A tensor holds a site's values when no element differs by more than this fraction of the largest |value|:
# float32 kernels of TFLite and TensorFlow differ by ~1e-6 of the scale on BiT; distinct tensors by far more.
MATCH_RTOL = 1e-3


def matching_tensors(values: dict[int, np.ndarray], want: np.ndarray) -> list[int]:
    """Indices of the tensors in `values` that hold `want`'s values (in the same order, any shape)."""
    flat = np.asarray(want, np.float32).ravel()
    scale = float(np.abs(flat).max())
    if scale == 0.0:
        return []  # an all-zero tensor cannot be told from any other
    return [index for index, value in values.items()
            if value.size == flat.size and float(np.abs(value.ravel() - flat).max()) <= MATCH_RTOL * scale]


def probe_values(tflite: bytes, image: np.ndarray) -> dict[int, np.ndarray]:
    """Every float32 tensor of the float (or calibrated) model's main subgraph after one run on `image`."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=tflite, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    (first, *rest) = interpreter.get_input_details()
    if rest:
        raise ConvertError("quantization ranges by value need a model with one input")
    interpreter.set_tensor(first["index"], image.astype(np.float32))
    interpreter.invoke()
    values = {}
    for detail in interpreter.get_tensor_details():
        if detail["dtype"] != np.float32:
            continue
        try:
            values[detail["index"]] = np.array(interpreter.get_tensor(detail["index"]))
        except ValueError:  # a tensor without data (optional inputs)
            continue
    return values


def set_ranges(calibrated: bytes, image: np.ndarray, sites: dict[str, tuple[np.ndarray, tuple[float, float]]]
               ) -> tuple[bytes, dict[str, list[str]]]:
    """The calibrated model with each site's (min, max) on the tensors that hold its values on `image`, and on
    what same-scale ops pass them to. `sites`: {name: (the site's float values on `image`, (min, max))}.
    Returns (the edited model, {site: names of the tensors it set}); a site no tensor holds raises."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    values = probe_values(calibrated, image)
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    subgraph = model.subgraphs[0]
    ranges: dict[int, tuple[float, float]] = {}
    found: dict[str, list[str]] = {}
    candidates = {}
    for site, (want, pair) in sites.items():
        candidates[site] = matching_tensors(values, want)
        if not candidates[site]:
            raise ConvertError(f"the QAT range {site!r} matches no tensor of the converted model")
    # Two sites can hold the same values (a global mean over a 1x1 map is its input): a tensor of a site's own
    # shape is that site's; a reshaped copy gets a range only where no site has its shape.
    for same_shape in (True, False):
        for site, (want, pair) in sites.items():
            for index in candidates[site]:
                if (values[index].shape == np.shape(want)) == same_shape and index not in ranges:
                    ranges[index] = pair
                    found.setdefault(site, []).append(index)
    for op in subgraph.operators:  # in execution order, so a chain of same-scale ops passes a range along
        code = model.operatorCodes[op.opcodeIndex]
        name = BUILTIN_OPERATORS.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        if name in SAME_SCALE_OPS and len(op.inputs) and op.inputs[0] in ranges:
            for output in op.outputs:
                ranges.setdefault(int(output), ranges[op.inputs[0]])
    for index, (low, high) in ranges.items():
        tensor = subgraph.tensors[index]
        if tensor.quantization is None:
            tensor.quantization = schema.QuantizationParametersT()
        tensor.quantization.min = [float(low)]
        tensor.quantization.max = [float(high)]
    names = {site: [_name(subgraph.tensors[i]) for i in indices] for site, indices in found.items()}
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), names


def _name(tensor) -> str:
    name = tensor.name
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
