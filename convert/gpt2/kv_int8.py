"""An int8 KV cache for a converted GPT-2 (``--kv-cache int8``): the cache inputs of both signatures become int8
tensors with one fixed scale per tensor (per layer, K and V apart; zero point 0), each read through a DEQUANTIZE
to the float32 tensor the graph had, which XNNPACK's delegate runs (it takes DEQUANTIZE of a dynamic per-tensor
int8 tensor; it takes no CAST, which is why an fp16 cache is not possible). The runtime writes each new K/V row
already quantized (runtime/generate.py). Everything else in the file is left as the converter wrote it.

Why a rewrite of the converted file and not the converter: fake-quantizing the cache inputs in the TensorFlow
graph does give int8 inputs (inference_input_type=int8), but any fake-quant op switches the converter to its
quantization-aware mode, which skips the dynamic-range quantization of the weights (they stay float32) and
quantizes SOFTMAX's output to int8. Measured in docs/gpt2_kv_cache.md.

In prefill each DEQUANTIZE's output goes through an ADD of 0 before the graph reads it: where a DEQUANTIZE fed
prefill's BATCH_MATMUL directly, XNNPACK kept an extra 18 MiB of anonymous memory after a 128-token chunk (it
appears to fuse the pair into something of its own); the copy costs one pass over the cache per chunk.

The scales are fixed here, from K/V ranges measured on calibration text (kv_channel_ranges): a value beyond the
range saturates at run time. Before that, export evens out the channels' ranges by factors folded into the
attention weights (kv_equalize.py), so that one scale per tensor serves every channel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liteship.errors import ConvertError
from liteship.runtime.files import read_text

ADD, DEQUANTIZE = 0, 6  # schema.fbs BuiltinOperator
INT8 = 9  # schema.fbs TensorType
KV_CACHE_TYPES = ("float32", "int8")
CALIBRATION_TOKENS = 8192  # at most this many tokens of the calibration text are run


def cache_names(n_layer: int) -> list[str]:
    return [f"{kv}_{l}" for kv in "kv" for l in range(n_layer)]


def calibration_windows(path, tokenizer, context: int, max_tokens: int = CALIBRATION_TOKENS) -> list[np.ndarray]:
    """The calibration text (a UTF-8 .txt file, or a folder of them) as token windows of ``context`` tokens, at
    most ``max_tokens`` in all: text like what the model will see, so that the K/V ranges it gives are the ones
    generation meets."""
    path = Path(path)
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not path.exists() or not files:
        raise ConvertError(f"--kv-calibration {path}: no such file, or a folder without .txt files")
    ids: list[int] = []
    for f in files:
        # an empty file is not refused here: too little text in all fails below, saying how much is needed
        ids.extend(tokenizer.encode(read_text(f, what="--kv-calibration", error=ConvertError, empty_ok=True)))
        if len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ConvertError(f"--kv-calibration {path}: needs at least 2 tokens of text, got {len(ids)}")
    arr = np.asarray(ids, np.int32)
    return [arr[s:s + context] for s in range(0, len(arr), context)]


def kv_channel_ranges(cfg, params: dict, token_ids: "list[np.ndarray]") -> dict[str, np.ndarray]:
    """{"k": (L, E), "v": (L, E)}: the largest |K| and |V| of every channel each layer produces over the
    calibration windows (each a token id array of at most n_positions), from the converter's own TF model on the
    float32 weights. Channel h * head_dim + d is head h's dimension d: the order of c_attn's output rows."""
    import tensorflow as tf

    from liteship.convert.gpt2.model import GPT2TF, cache_shapes
    from liteship.runtime.generate import MASK_EMPTY

    model = GPT2TF(cfg, params, max_context=cfg.n_positions, prefill_len=1)
    wte = np.asarray(params["wte.weight"], np.float32)
    kshape, vshape = cache_shapes(cfg, 0)
    empty_k, empty_v = tf.zeros(kshape), tf.zeros(vshape)
    top = {"k": np.zeros((cfg.n_layer, cfg.n_embd)), "v": np.zeros((cfg.n_layer, cfg.n_embd))}
    for ids in token_ids:
        T = len(ids)
        chunk_mask = np.triu(np.full((T, T), MASK_EMPTY, np.float32), k=1)
        out = model.forward(tf.constant(wte[np.asarray(ids)]), tf.range(T, dtype=tf.int32),
                            (tf.zeros((1, 0)), tf.constant(chunk_mask)),
                            [empty_k] * cfg.n_layer, [empty_v] * cfg.n_layer)
        for kv in "kv":
            for l in range(cfg.n_layer):
                seen = np.abs(out[f"{kv}_new_{l}"].numpy()).max(axis=1)  # (H, T, hd) -> (H, hd)
                top[kv][l] = np.maximum(top[kv][l], seen.reshape(-1))
    return top


def layer_ranges(channel_ranges: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """{"k": [L], "v": [L]}: each layer's widest channel, the range its one int8 scale covers."""
    return {kv: [float(x) for x in np.asarray(channel_ranges[kv]).max(axis=1)] for kv in "kv"}


def scales_for(ranges: dict[str, list[float]]) -> dict[str, list[float]]:
    """Symmetric int8 scales: the range maps to 127."""
    return {kv: [max(r, 1e-8) / 127.0 for r in rs] for kv, rs in ranges.items()}


def int8_cache_inputs(tflite: bytes, scales: dict[str, list[float]]) -> bytes:
    """The model with every signature's k_l / v_l input int8 at ``scales`` (as scales_for returns), each read
    through a DEQUANTIZE into the float32 tensor the rest of the graph uses."""
    from tensorflow.lite.python import schema_py_generated as fb

    from liteship.convert.tflite import _lean_object_to_bytearray

    model = fb.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    dequantize = _opcode(fb, model.operatorCodes, DEQUANTIZE, 2)  # version 2: int8 input
    add = _opcode(fb, model.operatorCodes, ADD, 1)
    zero = fb.BufferT()
    zero.data = np.zeros(4, np.uint8)  # float32 0.0
    model.buffers.append(zero)
    zero_buffer = len(model.buffers) - 1
    n_layer = len(scales["k"])
    for sig in model.signatureDefs:
        sg = model.subgraphs[sig.subgraphIndex]
        by_name = {t.name.decode() if isinstance(t.name, bytes) else t.name: t.tensorIndex for t in sig.inputs}
        new_ops = {}  # float tensor -> the operators that write it
        zero_index = None
        for name in cache_names(n_layer):
            index = by_name[name]
            tensor = sg.tensors[index]
            if tensor.type != fb.TensorType.FLOAT32:
                raise ValueError(f"signature {sig.signatureKey!r}: input {name} is not float32")
            float_index = _add_tensor(sg, _float_like(fb, tensor, name + "_dequantized"))
            tensor.type = INT8
            quant = fb.QuantizationParametersT()
            quant.scale = np.array([scales[name[0]][int(name[2:])]], np.float32)
            quant.zeroPoint = np.array([0], np.int64)
            quant.quantizedDimension = 0
            tensor.quantization = quant
            for op in sg.operators:
                op.inputs = np.where(np.asarray(op.inputs) == index, float_index, op.inputs).astype(np.int32)
            key = sig.signatureKey.decode() if isinstance(sig.signatureKey, bytes) else sig.signatureKey
            if key == "prefill":  # DEQUANTIZE -> ADD 0 -> the graph: see the module docstring
                copy_index = _add_tensor(sg, _float_like(fb, tensor, name + "_int8_as_float"))
                zero_index = zero_index if zero_index is not None else _add_tensor(sg, _scalar(fb, zero_buffer))
                new_ops[float_index] = [_op(fb, dequantize, [index], [copy_index]),
                                        _op(fb, add, [copy_index, zero_index], [float_index], fb.AddOptionsT())]
            else:
                new_ops[float_index] = [_op(fb, dequantize, [index], [float_index])]
        sg.operators = _just_before_use(sg.operators, new_ops)
    return _lean_object_to_bytearray(model)


def _just_before_use(operators: list, dequantizes: dict) -> list:
    """The graph's operators with each DEQUANTIZE right before the first one that reads its output. At the front
    of the graph all 2L float32 copies of the cache were alive at once (XNNPACK keeps a value from its producer
    to its last reader): +80 MiB of peak RSS at 896 tokens for GPT-2 124M, where one layer's copy at a time is
    what the int8 cache costs."""
    out, pending = [], dict(dequantizes)
    for op in operators:
        for t in op.inputs:
            if int(t) in pending:
                out.extend(pending.pop(int(t)))
        out.append(op)
    return [op for ops in pending.values() for op in ops] + out


def _opcode(fb, codes: list, builtin: int, version: int) -> int:
    """The index of ``builtin``'s operator code in ``codes``, at ``version`` or later; added when missing."""
    index = next((i for i, c in enumerate(codes) if max(c.builtinCode, c.deprecatedBuiltinCode) == builtin), None)
    if index is None:
        code = fb.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = builtin
        code.version = version
        codes.append(code)
        return len(codes) - 1
    codes[index].version = max(codes[index].version, version)
    return index


def _float_like(fb, tensor, name: str):
    t = fb.TensorT()
    t.shape, t.shapeSignature, t.type, t.buffer, t.name = tensor.shape, tensor.shapeSignature, fb.TensorType.FLOAT32, \
        0, name.encode()
    return t


def _scalar(fb, buffer: int):
    t = fb.TensorT()
    t.shape, t.type, t.buffer, t.name = np.zeros(0, np.int32), fb.TensorType.FLOAT32, buffer, b"zero"
    return t


def _add_tensor(sg, tensor) -> int:
    sg.tensors.append(tensor)
    return len(sg.tensors) - 1


def _op(fb, opcode: int, inputs: list[int], outputs: list[int], options=None):
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = opcode, np.array(inputs, np.int32), np.array(outputs, np.int32)
    if options is not None:
        op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.AddOptions, options
    return op
