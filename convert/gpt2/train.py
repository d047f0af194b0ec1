"""Fine-tuning a GPT-2 checkpoint on the user's text, in tf_keras, and writing it back as a Hugging Face folder.

The export model (model.py) is a tf.Module shaped for TFLite (an external KV cache, prefill/decode signatures);
training wants a plain causal LM over whole windows, a batch axis and a Keras layer TFMOT can wrap. So this is a
second, small re-authoring: one `GPT2Body` layer holding every weight under its model name (weights.py's table)
and the LM head tied to wte. Its projection matrices are stored [in, out] (Keras Dense's and GPT-2 Conv1D's
layout), because TFMOT's M-by-N pattern runs along the first axis of a 2-D weight, and 2:4 must run along the
input for TFLite's sparse FULLY_CONNECTED; `params_of` hands them back in the export model's [out, in].
Pruning (convert/gpt2/prune.py) builds on it; the folder written here is what `liteship convert gpt2` reads.
Imports tf_keras at the top: import it only where TensorFlow is wanted.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras

from liteship.convert.gpt2 import weights as W
from liteship.convert.gpt2.config import ACTIVATIONS, GPT2Config
from liteship.convert.gpt2.model import param_shapes
from liteship.errors import ConvertError
from liteship.runtime import files

HOLDOUT = 0.1  # the last tenth of the text's tokens is held out to measure perplexity
MIN_WINDOWS = 2  # training and held-out text each need at least this many windows
# Files of a checkpoint folder that hold weights: not copied into a pruned folder, which gets model.safetensors.
WEIGHT_FILE = re.compile(r"^(model.*\.safetensors(\.index\.json)?|pytorch_model.*\.bin(\.index\.json)?|tf_model\.h5)$")
MATRICES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def is_matrix(name: str) -> bool:
    return name.split(".", 2)[-1] in MATRICES


class GPT2Body(tf_keras.layers.Layer):
    """Token ids (B, T) -> logits (B, T, V): GPT-2 with full causal attention, for training.

    A PrunableLayer by its get_prunable_weights (TFMOT accepts the method duck-typed): the four projections of
    every block; the token and position tables (wte is also the LM head) only with prune_embeddings."""

    def __init__(self, config: dict, prune_embeddings: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.config = dict(config)
        self.cfg = GPT2Config.from_dict(config)
        self.prune_embeddings = prune_embeddings

    def build(self, input_shape):
        self.params = {name: self.add_weight(name=name, shape=shape[::-1] if is_matrix(name) else shape,
                                             initializer="zeros")
                       for name, shape in param_shapes(self.cfg).items()}  # matrices [in, out]
        super().build(input_shape)

    def _layer_norm(self, x, prefix):
        mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
        return ((x - mean) * tf.math.rsqrt(var + self.cfg.layer_norm_epsilon) * self.params[prefix + ".weight"]
                + self.params[prefix + ".bias"])

    def _linear(self, x, prefix):
        return tf.matmul(x, self.params[prefix + ".weight"]) + self.params[prefix + ".bias"]  # weight [in, out]

    def _act(self, x):
        kind = ACTIVATIONS[self.cfg.activation]
        if kind == "relu":
            return tf.nn.relu(x)
        return tf.nn.gelu(x, approximate=kind == "gelu_tanh")

    def call(self, ids):
        cfg = self.cfg
        H, hd, E = cfg.n_head, cfg.head_dim, cfg.n_embd
        T = tf.shape(ids)[1]
        x = tf.gather(self.params["wte.weight"], ids) + self.params["wpe.weight"][:T]  # (B, T, E)
        causal = tf.linalg.band_part(tf.ones((T, T)), -1, 0)  # (T, T) lower triangle
        mask = (1.0 - causal) * -1e9

        def heads(t):
            return tf.transpose(tf.reshape(t, (tf.shape(t)[0], T, H, hd)), (0, 2, 1, 3))  # (B, H, T, hd)

        for i in range(cfg.n_layer):
            p = f"h.{i}."
            q, k, v = tf.split(self._linear(self._layer_norm(x, p + "ln_1"), p + "attn.c_attn"), 3, axis=-1)
            scores = tf.matmul(heads(q), heads(k), transpose_b=True) / math.sqrt(hd) + mask  # (B, H, T, T)
            out = tf.matmul(tf.nn.softmax(scores, axis=-1), heads(v))  # (B, H, T, hd)
            out = tf.reshape(tf.transpose(out, (0, 2, 1, 3)), (tf.shape(x)[0], T, E))
            x = x + self._linear(out, p + "attn.c_proj")
            h = self._act(self._linear(self._layer_norm(x, p + "ln_2"), p + "mlp.c_fc"))
            x = x + self._linear(h, p + "mlp.c_proj")
        x = self._layer_norm(x, "ln_f")
        return tf.matmul(x, self.params["wte.weight"], transpose_b=True)  # (B, T, V), the tied LM head

    def prunable_names(self) -> list[str]:
        names = [f"h.{i}.{m}" for i in range(self.cfg.n_layer) for m in MATRICES]
        return names + (["wte.weight", "wpe.weight"] if self.prune_embeddings else [])

    def get_prunable_weights(self):
        return [self.params[name] for name in self.prunable_names()]

    def get_config(self):
        return {**super().get_config(), "config": self.config, "prune_embeddings": self.prune_embeddings}


def training_model(cfg: GPT2Config, params: dict[str, np.ndarray], *, prune_embeddings: bool = False):
    """Functional tf_keras model ids (B, T) -> logits (B, T, V) holding `params` (weights.py's model names)."""
    ids = tf_keras.Input((None,), dtype=tf.int32, name="ids")
    body = GPT2Body(cfg.to_dict(), prune_embeddings, name="gpt2")
    model = tf_keras.Model(ids, body(ids), name="gpt2_lm")
    body.set_weights([params[name].T if is_matrix(name) else params[name] for name in body.params])
    return model


def body_of(model) -> GPT2Body:
    layer = model.get_layer("gpt2")
    return getattr(layer, "layer", layer)  # inside a pruning wrapper after prune_low_magnitude


def params_of(model) -> dict[str, np.ndarray]:
    body = body_of(model)
    return {name: variable.numpy().T if is_matrix(name) else variable.numpy()  # back to [out, in]
            for name, variable in body.params.items()}


# ---- the checkpoint folder -----------------------------------------------------------------------------------

def save_checkpoint(source: Path, out: Path, cfg: GPT2Config, params: dict[str, np.ndarray]) -> Path:
    """Write a Hugging Face GPT-2 folder to `out` (an existing empty folder): every non-weight file of `source`
    (tokenizer, generation config) copied, config.json with n_inner when it changed, model.safetensors in
    save_pretrained's naming and Conv1D [in, out] layout. Returns the weights file."""
    from safetensors.numpy import save_file

    for path in sorted(Path(source).iterdir()):
        if path.is_file() and not WEIGHT_FILE.match(path.name) and not path.name.startswith("."):
            shutil.copyfile(path, out / path.name)
    _, hf = W.read_config(source)
    if cfg.n_inner is not None:
        hf["n_inner"] = cfg.n_inner
    (out / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    tensors = {}
    for name in W.tensor_names(cfg):
        value = params[name.model]
        if name.transform is W.conv1d_in_out_to_fc_out_in:
            value = value.T  # back to Conv1D's [in, out]
        tensors["transformer." + name.hf] = np.ascontiguousarray(value, dtype=np.float32)
    path = out / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})  # transformers refuses a file without "format"
    return path


# ---- the user's text -----------------------------------------------------------------------------------------

@dataclass
class TextData:
    train: np.ndarray  # (N, seq + 1) token windows
    test: np.ndarray  # (M, seq + 1)
    tokens: int


def tokenizer_of(ckpt: Path):
    from liteship.runtime.tokenizer import ByteLevelBPETokenizer

    if (ckpt / "tokenizer.json").is_file():
        return ByteLevelBPETokenizer.from_tokenizer_json(ckpt / "tokenizer.json")
    if (ckpt / "vocab.json").is_file() and (ckpt / "merges.txt").is_file():
        added = ckpt / "added_tokens.json"
        return ByteLevelBPETokenizer.from_files(ckpt / "vocab.json", ckpt / "merges.txt",
                                                added if added.is_file() else None)
    raise ConvertError(f"{ckpt}: no tokenizer (needs tokenizer.json, or vocab.json and merges.txt)")


def read_text(path: str | Path, ckpt: Path, cfg: GPT2Config, seq: int) -> TextData:
    """The text file tokenized with the checkpoint's own tokenizer, cut into windows of seq + 1 tokens; the last
    HOLDOUT of the tokens is held out. Too little text, or tokens the model has no row for, fail here."""
    path = Path(path)
    text = files.read_text(path, what="--data", error=ConvertError, hint="GPT-2 fine-tunes on one UTF-8 text file",
                           empty_ok=True)  # too little text fails below, saying how much is needed
    ids = np.asarray(tokenizer_of(ckpt).encode(text), dtype=np.int32)
    if len(ids) and ids.max() >= cfg.vocab_size:
        raise ConvertError(f"--data {path}: the tokenizer gives token id {int(ids.max())} but the model has "
                           f"only {cfg.vocab_size} embeddings (tokenizer and checkpoint do not match)")
    split = int(len(ids) * (1 - HOLDOUT))

    def windows(stream):
        n = len(stream) // (seq + 1)
        return stream[:n * (seq + 1)].reshape(n, seq + 1)

    train, test = windows(ids[:split]), windows(ids[split:])
    need = int(math.ceil(MIN_WINDOWS * (seq + 1) / HOLDOUT))
    if len(train) < MIN_WINDOWS or len(test) < MIN_WINDOWS:
        raise ConvertError(f"--data {path}: {len(ids)} tokens is too little text for windows of {seq + 1} tokens; "
                           f"give at least {need} tokens (a tenth is held out), or a smaller --context")
    return TextData(train, test, len(ids))


# ---- fine-tuning and perplexity --------------------------------------------------------------------------------

def fine_tune(model, data: TextData, *, steps: int, learning_rate: float, batch_size: int, seed: int,
              callbacks=()) -> float | None:
    """`steps` AdamW-free plain Adam steps of next-token loss on random training windows; returns the last loss."""
    if steps == 0:
        return None
    tf_keras.utils.set_random_seed(seed)
    order = np.random.default_rng(seed).integers(0, len(data.train), size=steps * batch_size)
    windows = data.train[order]  # (steps * B, seq + 1)
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate, clipnorm=1.0),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(windows[:, :-1], windows[:, 1:], batch_size=batch_size, epochs=1, shuffle=False,
                        verbose=0, callbacks=list(callbacks))
    return float(history.history["loss"][-1])


def nll_sum(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum of -log p(target) over (T, V) logits and (T,) targets, in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-logp[np.arange(len(targets)), targets].sum())


def perplexity(model, data: TextData) -> float:
    logits = model.predict(data.test[:, :-1], batch_size=8, verbose=0)  # (M, seq, V)
    total = sum(nll_sum(l, w[1:]) for l, w in zip(logits, data.test))
    return math.exp(total / data.test[:, 1:].size)


def bundle_perplexity(bundle: Path, data: TextData) -> float:
    """The same windows through a converted bundle's prefill, as the runtime runs it."""
    from liteship.runtime.generate import KVCacheSession

    session = KVCacheSession(bundle, threads=2)
    total = 0.0
    for window in data.test:
        session.reset()
        logits = session.prefill(window[:-1].astype(np.int32))  # (seq, V)
        total += nll_sum(logits, window[1:])
    return math.exp(total / data.test[:, 1:].size)
