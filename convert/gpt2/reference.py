"""A GPT-2 checkpoint as a reference for `liteship eval gpt2 --reference CHECKPOINT`: the converter's own TF model
(model.py), run eagerly on the checkpoint's float32 weights, with no cache: what the bundle would compute before
conversion and quantization. Imported lazily by liteship.runtime.text_eval, only for a checkpoint reference."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from liteship.convert.gpt2.model import GPT2TF, cache_shapes
from liteship.convert.gpt2.weights import load_checkpoint
from liteship.runtime.generate import MASK_EMPTY


def checkpoint_logits(ckpt: str | Path, *, context: int) -> Callable[[np.ndarray], np.ndarray]:
    """ids (T,) -> logits (T, V) of the checkpoint, for windows of at most ``context`` tokens."""
    import tensorflow as tf

    cfg, params, _ = load_checkpoint(Path(ckpt))
    model = GPT2TF(cfg, params, max_context=min(context, cfg.n_positions), prefill_len=1)
    wte = params["wte.weight"]  # (V, E): the tied token embedding, which the bundle also looks rows up in
    kshape, vshape = cache_shapes(cfg, 0)  # an empty cache: (H, 0, hd)
    empty_k, empty_v = tf.zeros(kshape), tf.zeros(vshape)

    def run(ids: np.ndarray) -> np.ndarray:
        T = len(ids)
        chunk_mask = np.triu(np.full((T, T), MASK_EMPTY, np.float32), k=1)  # (T, T): token t sees tokens <= t
        masks = (tf.zeros((1, 0)), tf.constant(chunk_mask))  # prefill's: no cached slot, the chunk itself
        out = model.forward(tf.constant(wte[np.asarray(ids)]), tf.range(T, dtype=tf.int32), masks,
                            [empty_k] * cfg.n_layer, [empty_v] * cfg.n_layer)
        return out["logits"].numpy()  # (T, V)

    return run
