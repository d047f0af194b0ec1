"""Prefill and decode speed of a GPT-2 bundle: the ``generation`` block of liteship.bench/1 (runtime/bench.py)."""

from __future__ import annotations

import time
from typing import Iterable

import numpy as np

from liteship.runtime.generate import KVCacheSession
from liteship.runtime.memory import peak_rss_bytes


def benchmark_generation(bundle_path, *, threads: int | None = None, backend: str = "auto", prompt_tokens: int = 128,
                         new_tokens: int = 32, context: int = 256, contexts: Iterable[int] = (),
                         seed: int = 0, repeats: int = 3, grow_cache: bool | None = None, engine: str = "auto") -> dict:
    """Prefill and decode speed of a GPT-2 bundle: the ``generation`` block of liteship.bench/1.

    Prefill: ``prompt_tokens`` random ids from an empty cache. Decode: ``new_tokens`` greedy steps ending at
    ``context`` filled slots (slots before are marked filled without being computed: a step's cost depends on
    the shapes, not the cached values). ``contexts`` adds decode rates at other context lengths. Each rate is the
    best of ``repeats`` rounds (prefill too), the contexts taking turns, so a burst of other work on the device
    hits one round rather than one context. ``grow_cache`` as in KVCacheSession (default: grow where the bundle allows)."""
    t0 = time.perf_counter()
    sess = KVCacheSession(bundle_path, threads=threads, backend=backend, grow_cache=grow_cache, engine=engine)
    init_s = time.perf_counter() - t0
    C = sess.max_context
    rng = np.random.default_rng(seed)
    prompt_tokens = min(prompt_tokens, C)
    ids = rng.integers(0, sess.vocab_size, prompt_tokens)
    sess.prefill(ids[: min(prompt_tokens, sess.prefill_len)])  # warm-up: first invocations pay one-time costs
    prefill_s = float("inf")
    for _ in range(max(1, repeats)):  # best of rounds, as for decode
        sess.reset()
        t0 = time.perf_counter()
        logits = sess.prefill(ids, all_logits=False)[-1]
        prefill_s = min(prefill_s, time.perf_counter() - t0)

    def decode_rate(ctx: int) -> float:
        ctx = min(ctx, C)
        n = min(new_tokens, ctx - 1)
        sess.reset()
        sess.advance_empty(ctx - n)
        sess.decode(int(np.argmax(logits)))  # warm-up step, not timed
        sess.length -= 1
        t = time.perf_counter()
        token = int(np.argmax(logits))
        for _ in range(n):
            token = int(np.argmax(sess.decode(token)))
        return n / (time.perf_counter() - t)

    wanted = sorted({context, *contexts})
    best = {int(c): 0.0 for c in wanted}
    for _ in range(max(1, repeats)):
        for c in wanted:
            best[int(c)] = max(best[int(c)], decode_rate(c))
    by_context = {c: round(rate, 2) for c, rate in best.items()}
    return {
        "prefill_tokens": int(prompt_tokens),
        "prefill_tok_s": round(prompt_tokens / prefill_s, 2),
        "decode_tokens": int(min(new_tokens, min(context, C) - 1)),
        "decode_tok_s": by_context[int(context)],
        "context": int(min(context, C)),
        "decode_tok_s_by_context": {str(k): v for k, v in by_context.items()},
        "max_context": C,
        "kv_cache": sess.cache_description(),
        "engine": sess.engine,
        "init_s": round(init_s, 3),
        "threads": sess.threads,
        "peak_rss_bytes": peak_rss_bytes(),
    }
