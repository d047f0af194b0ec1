"""GPT-2 re-authored in TensorFlow for export to TFLite with an external, runtime-owned KV cache.

Two functions share one set of variables (exported as a SavedModel with variables, so the converter never holds the
weights as embedded graph constants):

  prefill(embeds[T, E], positions[T], cache_mask[1, S], chunk_mask[T, T], k_0..k_{L-1}[H, S, hd],
          v_0..v_{L-1}[H, S, hd], rows[R])
      -> logits[R, V], k_new_0..k_new_{L-1}[H, T, hd], v_new_0..v_new_{L-1}[H, T, hd]
  decode(embeds[1, E], position[1], mask[1, S+1], k_i[H, S, hd], v_i[H, S, hd])
      -> logits[1, V], k_new[L, H, 1, hd], v_new[L, H, 1, hd]

C is max_context, P the prefill chunk the bundle records (the runtime's largest), L layers, H heads, hd head size,
V vocab. S, the cache's slot count, is left open in the graph: the runtime sizes it to the slots in use (S <= C,
grown in steps), per signature. T, prefill's chunk length, is open too: the runtime chooses it per chunk, smaller
at long context, so that prefill's [H, T, S] attention scores stay within a fixed budget. R, the number of
positions that get logits (`rows`, indices into the chunk), is open too: 1 in generation.
Why this layout (measured, see docs/gpt2_kv_cache.md):
- The cache is an *input* per layer that the runtime owns and never sends back: the model emits only the K/V of
  the new token(s); the runtime writes that slice into the interpreter's input buffer in place. Nothing in the
  graph copies or blends the whole cache, so a step costs the weights plus one read of the cache.
- K and V are both stored [H, C, hd], so a new token's K/V is one contiguous row per head; decode attends with
  MUL + SUM over the cache (each byte read once), prefill with BATCH_MATMUL (see attend()).
- Attention runs over the S slots with an additive mask the runtime maintains (0 = valid, -1e9 = empty), plus the
  new token(s) attending to themselves through a separate [.., T] block, so the new K/V never has to be in the cache
  before the step that produces it. In prefill the two blocks are never concatenated: one softmax spans both
  (attend_chunk), so no [H, T, S+T] copy and no slices of it take arena memory.
- Prefill returns each layer's K/V as its own output: a stacked [L, H, T, hd] output kept all 2L values alive in
  the arena until the stack at the very end.
- Weights for matrix products are stored [out, in] (FULLY_CONNECTED's own layout) so the converter folds no
  transposes.
- The token embedding table exists once, as the tied LM head's FULLY_CONNECTED weight. The runtime looks token rows
  up in that very tensor (dequantizing one row) and passes them in as `embeds`: a GATHER in the graph made the
  dynamic-int8 converter store a second, per-tensor int8 copy of the 50257 x 768 table (and older recipes a
  whole-table DEQUANTIZE per step). The converter must therefore leave that weight as it is: see
  _final_layer_norm, and the check in export.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from liteship.convert.gpt2.config import ACTIVATIONS, GPT2Config


def param_shapes(cfg: GPT2Config) -> dict[str, tuple]:
    """Every variable the TF model needs, by canonical name, with the shape it wants ([out, in] for products)."""
    E, V = cfg.n_embd, cfg.vocab_size
    shapes = {"wte.weight": (V, E), "wpe.weight": (cfg.n_positions, E), "ln_f.weight": (E,), "ln_f.bias": (E,)}
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (E,), p + "ln_1.bias": (E,),
            p + "attn.c_attn.weight": (3 * E, E), p + "attn.c_attn.bias": (3 * E,),
            p + "attn.c_proj.weight": (E, E), p + "attn.c_proj.bias": (E,),
            p + "ln_2.weight": (E,), p + "ln_2.bias": (E,),
            p + "mlp.c_fc.weight": (cfg.inner, E), p + "mlp.c_fc.bias": (cfg.inner,),
            p + "mlp.c_proj.weight": (E, cfg.inner), p + "mlp.c_proj.bias": (E,),
        })
    return shapes


def cache_shapes(cfg: GPT2Config, max_context: int | None) -> tuple[tuple, tuple]:
    """(K cache shape, V cache shape) of one layer; None leaves the slot count open."""
    return (cfg.n_head, max_context, cfg.head_dim), (cfg.n_head, max_context, cfg.head_dim)


def attend(q, k, v, k_cache, v_cache, mask):
    """Decode's attention: one new token over S cached slots plus itself.

    q, k, v: (H, 1, hd); k_cache, v_cache: (H, S, hd); mask: (1, S+1) additive. Returns (H, 1, hd).
    MUL + SUM instead of BATCH_MATMUL: with a non-constant right-hand side the BATCH_MATMUL kernels repack/transpose
    the whole cache on every call, which made attention over C=1024 cost more than all the int8 weights of a step
    (docs/gpt2_kv_cache.md); the elementwise form reads each cache byte once. S is not fixed in the graph (the
    runtime sizes the cache inputs to the slots in use), so nothing here may depend on it: shapes are -1 and the
    new token's own column is the last.
    """
    H = q.shape[0]
    cached = tf.reshape(tf.reduce_sum(q * k_cache, axis=-1), (H, 1, -1))  # (H, 1, S)
    itself = tf.reduce_sum(q * k, axis=-1, keepdims=True)  # (H, 1, 1)
    probs = tf.nn.softmax(tf.concat([cached, itself], axis=-1) + mask, axis=-1)  # (H, 1, S+1)
    weights = tf.reshape(probs[:, :, :-1], (H, -1, 1))  # (H, S, 1)
    out = tf.reduce_sum(weights * v_cache, axis=1, keepdims=True)  # (H, 1, hd)
    return out + probs[:, :, -1:] * v  # (H, 1, hd)


def attend_chunk(q, k, v, k_cache, v_cache, cache_mask, chunk_mask):
    """Prefill's attention: T new tokens over S cached slots plus themselves, one softmax over the two blocks.

    q, k, v: (H, T, hd); k_cache, v_cache: (H, S, hd); cache_mask: (1, S) additive, the same for every token of the
    chunk (they all see the filled slots); chunk_mask: (T, T) additive (causal, plus padding). Returns (H, T, hd).
    Neither T nor S is fixed in the graph. The blocks are exponentiated against their common maximum and summed
    apart, so nothing concatenates or slices the [H, T, S] scores: each such tensor at T=128, S=896 is 5.5 MiB of
    arena (docs/gpt2_kv_cache.md). BATCH_MATMUL here: prefill is compute-bound.
    """
    cached = tf.matmul(q, k_cache, transpose_b=True) + cache_mask  # (H, T, S)
    itself = tf.matmul(q, k, transpose_b=True) + chunk_mask  # (H, T, T)
    top = tf.maximum(tf.reduce_max(cached, axis=-1, keepdims=True),
                     tf.reduce_max(itself, axis=-1, keepdims=True))  # (H, T, 1)
    cached = tf.exp(cached - top)  # (H, T, S)
    itself = tf.exp(itself - top)  # (H, T, T)
    total = tf.reduce_sum(cached, axis=-1, keepdims=True) + tf.reduce_sum(itself, axis=-1, keepdims=True)
    return (tf.matmul(cached, v_cache) + tf.matmul(itself, v)) / total  # (H, T, hd)


def matrix_names(cfg: GPT2Config) -> list[str]:
    """The weights that hold almost all of the model's bytes: every matrix product's weight and the tied token
    table (the position table, C x E, is small and gathered, not multiplied)."""
    return sorted(n for n, shape in param_shapes(cfg).items() if len(shape) == 2 and n != "wpe.weight")


# LayerNorm -> matrix product pairs whose LayerNorm scale and shift go into the product (the converter does the same
# fold on real weights; with placeholders it would fold them into the placeholder and its bias, so export does it).
FOLDED_NORMS = (("ln_1", "attn.c_attn"), ("ln_2", "mlp.c_fc"))


def folded_pairs(cfg: GPT2Config) -> dict[str, str]:
    """product prefix -> its LayerNorm prefix, e.g. "h.0.attn.c_attn" -> "h.0.ln_1"."""
    return {f"h.{i}.{fc}": f"h.{i}.{ln}" for i in range(cfg.n_layer) for ln, fc in FOLDED_NORMS}


def fold_weight(weight: np.ndarray, ln_weight: np.ndarray) -> np.ndarray:
    """W (out, in) applied to LN(x) = n * g + b equals (W * g) applied to n, plus W @ b: the weight part."""
    return weight * ln_weight[None, :]  # (out, in): column j scaled by g_j


def fold_bias(weight: np.ndarray, bias: np.ndarray, ln_bias: np.ndarray) -> np.ndarray:
    """The bias part of the fold: b + W @ b_ln (out,), summed in float64."""
    return (bias.astype(np.float64) + weight.astype(np.float64) @ ln_bias.astype(np.float64)).astype(np.float32)


class GPT2TF(tf.Module):
    def __init__(self, cfg: GPT2Config, params: dict[str, np.ndarray], *, max_context: int, prefill_len: int,
                 placeholders: dict[str, "float | np.ndarray"] | None = None):
        """``placeholders`` (name -> value): these weights are not in ``params``; the graph holds each as a constant
        of its shape filled with its one value, which TensorFlow and the converter store as a single number
        (a splat) until the .tflite is written. Export then writes the real weights over them
        (convert/gpt2/weight_writer.py): the converter never holds a gigabyte-sized constant. With placeholders
        the LayerNorms before c_attn and c_fc only normalise: their scale and shift are already folded into the
        product (fold_weight, fold_bias), so nothing is left for the converter to fold into a placeholder."""
        super().__init__(name="gpt2")
        if max_context > cfg.n_positions:
            raise ValueError(f"max_context {max_context} exceeds the model's n_positions {cfg.n_positions}")
        self.cfg, self.C, self.P = cfg, max_context, prefill_len
        self._placeholders = dict(placeholders or {})
        self._folded = set(folded_pairs(cfg).values()) if placeholders else set()
        self._shapes = param_shapes(cfg)
        # Only the first C position rows can ever be used; storing the rest would waste file size.
        params = dict(params, **{"wpe.weight": params["wpe.weight"][:max_context]})
        unused = {f"{ln}.{kind}" for ln in self._folded for kind in ("weight", "bias")}
        self._names = sorted(n for n in params if n not in self._placeholders and n not in unused)
        self.vars = [tf.Variable(params[n], trainable=False, name=n.replace(".", "_")) for n in self._names]
        self._index = {n: i for i, n in enumerate(self._names)}

    def _w(self, name):
        value = self._placeholders.get(name)
        if isinstance(value, np.ndarray):  # one row, repeated (weight_writer.placeholder_values says why)
            return tf.broadcast_to(tf.constant(value, tf.float32), self._shapes[name])
        if value is not None:  # built while tracing: a graph constant, one value and a shape
            return tf.constant(value, tf.float32, shape=self._shapes[name])
        return self.vars[self._index[name]]

    def _layer_norm(self, x, prefix):
        mean = tf.reduce_mean(x, axis=-1, keepdims=True)
        xc = x - mean
        var = tf.reduce_mean(tf.square(xc), axis=-1, keepdims=True)
        normalized = xc * tf.math.rsqrt(var + self.cfg.layer_norm_epsilon)
        if prefix in self._folded:  # scale and shift live in the next product (FOLDED_NORMS)
            return normalized
        return normalized * self._w(prefix + ".weight") + self._w(prefix + ".bias")

    def _final_layer_norm(self, x):
        """ln_f, with its scale applied before the normalising rsqrt rather than after it. The LM head's weight is
        the token table the runtime reads embeddings from (runtime/token_table.py), and TFLite folds a constant
        multiplier that directly precedes a FULLY_CONNECTED into its weight: a uniform ln_f scale (1.5 everywhere,
        or every parameter of a model scaled) became part of every token row. Here no constant directly precedes
        the head, so nothing is folded into it; export still checks the table (convert/gpt2/token_table.py)."""
        mean = tf.reduce_mean(x, axis=-1, keepdims=True)
        xc = x - mean
        var = tf.reduce_mean(tf.square(xc), axis=-1, keepdims=True)
        return (xc * self._w("ln_f.weight")) * tf.math.rsqrt(var + self.cfg.layer_norm_epsilon) + self._w("ln_f.bias")

    def _linear(self, x, prefix):
        return tf.matmul(x, self._w(prefix + ".weight"), transpose_b=True) + self._w(prefix + ".bias")

    def _act(self, x):
        kind = ACTIVATIONS[self.cfg.activation]
        if kind == "gelu_tanh":
            return tf.nn.gelu(x, approximate=True)
        if kind == "gelu_erf":
            return tf.nn.gelu(x, approximate=False)
        return tf.nn.relu(x)

    def _block(self, i, x, k_cache, v_cache, masks):
        """masks: (mask,) in decode, (cache_mask, chunk_mask) in prefill (see attend, attend_chunk)."""
        H, hd, E = self.cfg.n_head, self.cfg.head_dim, self.cfg.n_embd
        h = self._layer_norm(x, f"h.{i}.ln_1")
        qkv = self._linear(h, f"h.{i}.attn.c_attn")  # (T, 3E)
        q, k, v = tf.split(qkv, 3, axis=-1)  # (T, E) each
        q = tf.transpose(tf.reshape(q * (1.0 / math.sqrt(hd)), (-1, H, hd)), (1, 0, 2))  # (H, T, hd)
        k = tf.transpose(tf.reshape(k, (-1, H, hd)), (1, 0, 2))  # (H, T, hd)
        v = tf.transpose(tf.reshape(v, (-1, H, hd)), (1, 0, 2))  # (H, T, hd)
        if len(masks) == 1:
            out = attend(q, k, v, k_cache, v_cache, masks[0])  # (H, 1, hd)
        else:
            out = attend_chunk(q, k, v, k_cache, v_cache, *masks)  # (H, T, hd)
        out = tf.reshape(tf.transpose(out, (1, 0, 2)), (-1, E))  # (T, E)
        x = x + self._linear(out, f"h.{i}.attn.c_proj")
        h = self._layer_norm(x, f"h.{i}.ln_2")
        x = x + self._linear(self._act(self._linear(h, f"h.{i}.mlp.c_fc")), f"h.{i}.mlp.c_proj")
        return x, k, v

    def forward(self, embeds, positions, masks, k_caches, v_caches, rows=None):
        """masks: (mask,) for decode, (cache_mask, chunk_mask) for prefill. rows (prefill only): which of the T
        positions get logits. Generation asks for the last one only: the LM head is 38.6M multiply-adds per row,
        and T rows of logits are T x V floats of arena."""
        wte = self._w("wte.weight")
        x = embeds + tf.gather(self._w("wpe.weight"), positions)  # (T, E)
        ks, vs = [], []
        for i in range(self.cfg.n_layer):
            x, k, v = self._block(i, x, k_caches[i], v_caches[i], masks)
            ks.append(k)
            vs.append(v)
        if rows is not None:
            x = tf.gather(x, rows)  # (R, E)
        x = self._final_layer_norm(x)
        logits = tf.matmul(x, wte, transpose_b=True)  # (R, V): the LM head is the tied token embedding
        if len(masks) == 1:  # decode: one token's K/V, 2L rows in all; one output each is enough
            return {"logits": logits, "k_new": tf.stack(ks), "v_new": tf.stack(vs)}  # k/v: (L, H, 1, hd)
        return {"logits": logits, **{f"k_new_{i}": k for i, k in enumerate(ks)},  # each (H, T, hd)
                **{f"v_new_{i}": v for i, v in enumerate(vs)}}

    def input_signature(self, decode: bool) -> list:
        """Decode: one token; prefill: T tokens, T left open (-1 in the .tflite's shape signature): the runtime
        picks each chunk's length, up to P. In both the cache's slot count is open too: the runtime sizes its
        cache inputs to the slots in use and grows them with the text, so a step at position 100 reads 128 slots
        of cache rather than max_context, and a prefill of the first chunk holds no cache at all
        (docs/gpt2_kv_cache.md). Prefill's ``rows`` (length open) picks the positions that get logits: the last
        one in generation, all T for evaluation."""
        cfg = self.cfg
        (kshape, vshape) = cache_shapes(cfg, None)
        T = 1 if decode else None
        specs = [tf.TensorSpec((T, cfg.n_embd), tf.float32, name="embeds"),
                 tf.TensorSpec((T,), tf.int32, name="position" if decode else "positions")]
        if decode:
            specs.append(tf.TensorSpec((1, None), tf.float32, name="mask"))
        else:
            specs += [tf.TensorSpec((1, None), tf.float32, name="cache_mask"),
                      tf.TensorSpec((None, None), tf.float32, name="chunk_mask")]
        specs += [tf.TensorSpec(kshape, tf.float32, name=f"k_{i}") for i in range(cfg.n_layer)]
        specs += [tf.TensorSpec(vshape, tf.float32, name=f"v_{i}") for i in range(cfg.n_layer)]
        if not decode:
            specs.append(tf.TensorSpec((None,), tf.int32, name="rows"))
        return specs

    def concrete_function(self, decode: bool):
        L = self.cfg.n_layer
        signature = self.input_signature(decode)
        masks = sum(spec.name.endswith("mask") for spec in signature)  # (mask,) or (cache_mask, chunk_mask)

        def fn(*args):
            caches = args[2 + masks:2 + masks + 2 * L]
            rows = args[2 + masks + 2 * L] if len(args) > 2 + masks + 2 * L else None  # prefill's
            return self.forward(args[0], args[1], args[2:2 + masks], list(caches[:L]), list(caches[L:]), rows)

        return tf.function(fn, input_signature=signature).get_concrete_function()

    def signatures(self) -> dict:
        return {"prefill": self.concrete_function(decode=False), "decode": self.concrete_function(decode=True)}
