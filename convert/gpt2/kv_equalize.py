"""Per-channel equalization of GPT-2's K and V, folded into the attention weights, for the int8 KV cache.

The int8 cache has one scale per layer for K and one for V (kv_int8.py: XNNPACK's DEQUANTIZE of a dynamic tensor
takes per-tensor quantization only). Trained GPT-2 has a few K and V channels far wider than the rest; a
per-tensor scale spends its 256 steps on them and the other channels keep a few steps each. Rescaling the channels
so that their ranges agree moves the per-channel part into the weights, where it costs nothing in float arithmetic:

- K: an attention score is q . k within a head, so K channel c times s_c and Q channel c times 1 / s_c leave every
  score the same (c_attn's K and Q output rows, weight and bias).
- V: the attention output is a weighted sum of V rows (weights summing to 1), read by c_proj; V channel c times
  t_c and c_proj's input column c times 1 / t_c leave its output the same.

Nothing else changes: the token table, the LM head and every other weight are the checkpoint's. The factors come
from the calibration text's per-channel ranges (kv_int8.kv_channel_ranges).

Quantized weights: c_attn's rows are quantized one scale per output row (dynamic-int8, int4), which absorbs a row's
factor exactly (not so with --min-runtime 2.14's one scale per tensor). c_proj's are too, so its input columns
scaled by 1 / t_c change how its rows quantize: V's outlier channels, shrunk in the cache, come back as wider
columns of c_proj. Measured (docs/gpt2_kv_cache.md), full equalization of both lost nothing in any weight format
and beat equalizing halfway (strength 0.5) or K or V alone.
"""

from __future__ import annotations

import functools

import numpy as np

from liteship.convert.gpt2.weights import LazyTensor, materialize

# factor = (reference / range) ** strength per channel: 1 gives every channel the same range, 0.5 meets halfway
K_STRENGTH = 1.0  # Q stays float and c_attn's per-row weight scales absorb the factors
V_STRENGTH = 1.0
# The equalized cache's range over the calibration's widest channel. Equalized, every channel sits at the top
# of the range, where without equalization only the widest did: a channel that goes past its calibration range
# saturates. Held-out text went 18-34% past channels' ranges from 8192 calibration tokens, random tokens 62% past
# ranges from 122 (docs/gpt2_kv_cache.md); one bit of room keeps them inside.
HEADROOM = 2.0
FLOOR = 1e-2  # a channel narrower than this fraction of its layer's widest is treated as this wide: a dead
# channel gets a bounded factor, not one that sends its Q column (or c_proj's) to zero


def factors_for(channel_ranges: np.ndarray, strength: float) -> np.ndarray:
    """(L, E) per-channel factors for (L, E) per-channel ranges |max|: the reference of a layer is the geometric
    mean of its (floored) ranges, so the factors' product is 1 and values stay as large as they were overall."""
    r = np.asarray(channel_ranges, np.float64)  # (L, E)
    r = np.maximum(r, FLOOR * r.max(axis=1, keepdims=True))
    r = np.maximum(r, 1e-30)  # an all-zero layer
    reference = np.exp(np.log(r).mean(axis=1, keepdims=True))  # (L, 1)
    return (reference / r) ** strength


def equalization(channel_ranges: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{"k": (L, E), "v": (L, E)}: the factor of each K and V channel (channel h * head_dim + d, the order of
    c_attn's output rows)."""
    return {"k": factors_for(channel_ranges["k"], K_STRENGTH), "v": factors_for(channel_ranges["v"], V_STRENGTH)}


def equalized_params(params: dict, factors: dict[str, np.ndarray]) -> dict:
    """The model's weights with the factors folded in (the module docstring says how); LazyTensors stay lazy,
    each scaled when it is read. Weights are in the model's [out, in] layout (weights.py)."""
    out = dict(params)
    for layer, (s, t) in enumerate(zip(factors["k"], factors["v"])):
        rows = np.concatenate([1.0 / s, s, t])  # (3E,): c_attn's output rows, q | k | v
        p = f"h.{layer}.attn."
        out[p + "c_attn.weight"] = _scaled(params[p + "c_attn.weight"], rows[:, None])  # (3E, E)
        out[p + "c_attn.bias"] = _scaled(params[p + "c_attn.bias"], rows)  # (3E,)
        out[p + "c_proj.weight"] = _scaled(params[p + "c_proj.weight"], (1.0 / t)[None, :])  # (E, E): in columns
    return out


def _times(value, factor: np.ndarray) -> np.ndarray:
    return (np.asarray(materialize(value), np.float64) * factor).astype(np.float32)


def _scaled(value, factor: np.ndarray):
    if isinstance(value, LazyTensor):
        return LazyTensor(value.shape, functools.partial(_times, value, factor))
    return _times(value, factor)
