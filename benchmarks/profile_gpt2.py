"""What a GPT-2 124M decode step costs, piece by piece: each piece of the decode graph is converted on its own
(same ops, shapes and quantization recipe as convert/gpt2/model.py) and timed with the same interpreter settings,
next to the whole decode signature of a real bundle and the runtime's own per-step Python work.

    .venv/bin/python benchmarks/profile_gpt2.py [--bundle DIR] [--threads 2]

Prints a Markdown table (used in docs/gpt2_kv_cache.md). Pieces run alone stream their weights from cache/DRAM
the way the whole model does, so their sum approximates a step; the difference is the rest (norms, adds, GELU,
delegate boundaries).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
E, H, HD, V, L = 768, 12, 64, 50257, 12


def convert(fn, specs, quant: str) -> bytes:
    import tensorflow as tf

    from liteship.convert.quant import apply_recipe

    concrete = tf.function(fn, input_signature=specs).get_concrete_function()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    apply_recipe(conv, quant)
    return conv.convert()


def time_model(data: bytes, threads: int, runs: int = 60) -> float:
    from liteship.runtime.interpreter import create_interpreter

    path = Path(tempfile.mkdtemp()) / "m.tflite"
    path.write_bytes(data)
    it = create_interpreter(path, num_threads=threads)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    return best_ms(it.invoke, runs)


def best_ms(step, runs: int) -> float:
    """Fastest mean of 5-run batches: on a shared machine the minimum is the least disturbed estimate."""
    for _ in range(3):
        step()
    best = float("inf")
    for _ in range(max(1, runs // 5)):
        t = time.perf_counter()
        for _ in range(5):
            step()
        best = min(best, (time.perf_counter() - t) / 5)
    return best * 1e3


def pieces(quant: str):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    w = lambda *s: tf.constant(rng.normal(0, 0.02, s).astype(np.float32))
    f32 = lambda *s, name="x": tf.TensorSpec(s, tf.float32, name=name)

    def fc(n_in, n_out):
        W = w(n_out, n_in)
        return (lambda x: tf.matmul(x, W, transpose_b=True)), [f32(1, n_in)]

    def attention(C):
        from liteship.convert.gpt2.model import attend  # the model's own decode attention

        return attend, [f32(H, 1, HD), f32(H, 1, HD), f32(H, 1, HD), f32(H, C, HD), f32(H, C, HD), f32(1, C + 1)]

    return {
        "c_attn 768->2304 (x12)": (fc(E, 3 * E), L),
        "attn c_proj 768->768 (x12)": (fc(E, E), L),
        "mlp c_fc 768->3072 (x12)": (fc(E, 4 * E), L),
        "mlp c_proj 3072->768 (x12)": (fc(4 * E, E), L),
        "attention over C=256 (x12)": (attention(256), L),
        "attention over C=1024 (x12)": (attention(1024), L),
        "tied LM head 768->50257": (fc(E, V), 1),
    }


def runtime_overhead_ms(C: int = 1024, runs: int = 200) -> float:
    """The runtime's own per-step work: write 12 K and V slices into the cache views and argmax the logits."""
    kc = [np.zeros((H, HD, C), np.float32) for _ in range(L)]
    vc = [np.zeros((H, C, HD), np.float32) for _ in range(L)]
    kn = np.ones((L, H, 1, HD), np.float32)
    logits = np.random.default_rng(0).normal(size=V).astype(np.float32)
    t = time.perf_counter()
    for i in range(runs):
        p = i % C
        for l in range(L):
            kc[l][:, :, p:p + 1] = kn[l].transpose(0, 2, 1)
            vc[l][:, p:p + 1, :] = kn[l]
        int(np.argmax(logits))
    return (time.perf_counter() - t) / runs * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--quants", default="fp32,dynamic-int8")
    ap.add_argument("--bundle", action="append", default=[], help="bundle(s) whose whole decode step to time too")
    args = ap.parse_args()
    quants = args.quants.split(",")
    rows = {}
    for q in quants:
        for name, ((fn, specs), times) in pieces(q).items():
            ms = time_model(convert(fn, specs, q), args.threads)
            rows.setdefault(name, {})[q] = (ms, ms * times)
            print(f"{q:14s} {name:45s} {ms:7.3f} ms x{times}", file=sys.stderr)
    print(f"| piece (threads={args.threads}) | " + " | ".join(f"{q} ms/step" for q in quants) + " |")
    print("|---|" + "---|" * len(quants))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[q][1]:.2f}" for q in quants) + " |")
    print(f"| runtime: 24 cache-slice writes + argmax | {runtime_overhead_ms():.2f} (all modes) |")
    for b in args.bundle:
        from liteship.runtime.generate import KVCacheSession

        s = KVCacheSession(b, threads=args.threads)

        def step():
            s.length = 200
            s.decode(1)

        ms = best_ms(step, 40)
        print(f"| whole decode step at position 200 incl. runtime, {s.bundle.quantization} bundle "
              f"(C={s.max_context}, KV cache {s.cache_description()}: {s.slots} slots) | {ms:.2f} |")


if __name__ == "__main__":
    main()
