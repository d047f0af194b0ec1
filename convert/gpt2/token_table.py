"""At conversion: the token table the runtime will read must be the checkpoint's `wte`.

The runtime reads token embeddings from the tied LM head's weight inside the .tflite (liteship.runtime.token_table).
The TFLite converter may rewrite that weight: it folds a constant multiplier in front of a FULLY_CONNECTED into the
weight (a uniform final LayerNorm scale did exactly this: every embedding arrived 1.5x too large). The logits stay
right; the embeddings do not. So export reads the table back through the runtime's own reader and compares every
row with `wte`: exactly for a float32 table, within the storage's rounding for float16 and int8. Where they differ,
the bundle carries its own copy of the table (assets/token_table.npy), stored like the head (float32, float16, or
int8 with per-row scales), and the manifest says so; that copy is checked the same way.
"""

from __future__ import annotations

import io

import numpy as np

from liteship.runtime.token_table import SCALES_ASSET, TABLE_ASSET, TokenTable

FP16_HALF_STEP = 2.0 ** -11  # float16 keeps 11 significant bits: rounding moves a value by <= 2^-11 of itself
FP16_SUBNORMAL_HALF_STEP = 2.0 ** -25  # below 2^-14 the step is the subnormal spacing 2^-24
FLOAT32_SLACK = 2.0 ** -20  # 8 float32 ulps, relative: the arithmetic of dequantizing and comparing


def mismatch(table: TokenTable, wte: np.ndarray) -> str | None:
    """None when every row equals wte's within the table's own rounding; else a one-line account of the worst row."""
    if table.shape != wte.shape:
        return f"the table is {list(table.shape)}, wte is {list(wte.shape)}"
    worst = (0.0, -1, 0.0)  # (excess over the allowed error, row, error)
    for start, rows in table.all_rows():
        want = wte[start:start + len(rows)].astype(np.float32)
        err = np.abs(rows - want)  # (n, E)
        if table.scales is not None:  # int8, int4: rounding to nearest moves a value by at most half its row's step,
            # plus float32's own rounding of q * scale and of this difference (a few ulps of the value)
            allowed = table.scales[start:start + len(rows), None] * np.float32(0.5) + np.abs(want) * FLOAT32_SLACK
        elif table.dtype == np.float16:
            allowed = np.abs(want) * FP16_HALF_STEP + FP16_SUBNORMAL_HALF_STEP
        else:  # float32: stored as given, so equal to the bit
            allowed = np.zeros_like(want)
        excess = err - allowed
        i = np.unravel_index(int(np.argmax(excess)), excess.shape)
        if excess[i] > worst[0]:
            worst = (float(excess[i]), start + int(i[0]), float(err[i]))
    if worst[1] < 0:
        return None
    _, row, err = worst
    return (f"token row {row} differs from wte by up to {err:.3g} (more than its {table.dtype} rounding); "
            "the converter rewrote the LM head weight")


def own_copy(wte: np.ndarray, stored_dtype: np.dtype) -> dict[str, tuple[str, bytes]]:
    """Bundle assets holding wte stored as the head is (float32, float16, or int8 with symmetric per-row scales)."""
    wte = np.asarray(wte, np.float32)
    assets = {}
    if np.dtype(stored_dtype) == np.int8:
        scales = np.abs(wte).max(axis=1) / 127.0  # (V,): symmetric, as TFLite quantizes weights per channel
        scales[scales == 0] = 1.0
        table = np.clip(np.rint(wte / scales[:, None]), -127, 127).astype(np.int8)
        assets[SCALES_ASSET] = ("assets/token_scales.npy", _npy(scales.astype(np.float32)))
    else:
        table = wte.astype(stored_dtype)
    assets[TABLE_ASSET] = ("assets/token_table.npy", _npy(table))
    return assets


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()
