"""Text generation with a GPT-2 bundle: the one place that drives the `prefill` and `decode` signatures.

The KV cache lives in the decode signature's own input buffers, owned by this module and written in place through
zero-copy numpy views (no cache is ever passed in or copied back per step). Shapes, for L layers, H heads, head
size hd, static context C (manifest config "max_context"), prefill chunk P ("prefill_len") and S decode slots
(the cache size this module gives decode: SLOT_STEP at first, grown in steps of it as the text grows, at most C):

  prefill: embeds[P, E] float32, positions[P] int32, mask[P, C+P] float32, k_i[H, C, hd], v_i[H, C, hd]
           -> logits[P, V], k_new[L, H, P, hd], v_new[L, H, P, hd]
  decode:  embeds[1, E], position[1], mask[1, S+1], k_i[H, S, hd], v_i[H, S, hd]
           -> logits[1, V], k_new[L, H, 1, hd], v_new[L, H, 1, hd]

`embeds` are token embedding rows, read (and for int8 dequantized, one row at a time) by runtime.token_table: from
the tied LM head's weight inside the .tflite itself through a memory map (the table is stored once and never
dequantized whole), or from the bundle's own copy where conversion found the converter had rewritten that weight.

What is cached: for every token already seen at position p < C, its K and V (row p of each head in k_i / v_i);
mask[.., p] is 0 for filled slots and -1e9 for empty ones. The last P columns of a prefill mask (the last column of
a decode mask) are the chunk attending to itself, causally. After each call the runtime copies only
the new tokens' K/V slice into the cache, so a step's cost does not grow with the number of filled slots.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from liteship.errors import RuntimeLiteshipError
from liteship.runtime.bench import peak_rss_bytes
from liteship.runtime.token_table import TokenTable

MASK_EMPTY = np.float32(-1e9)


def _tensor_details(interp, subgraph: int) -> list[dict]:
    """interp.get_tensor_details(subgraph). tflite-runtime 2.14's public method reads subgraph 0 only, so there
    ask its per-tensor helper, which takes the subgraph."""
    try:
        return interp.get_tensor_details(subgraph)
    except TypeError:
        details = []
        for index in range(interp._interpreter.NumTensors(subgraph)):
            try:
                details.append(interp._get_tensor_details(index, subgraph))
            except ValueError:  # a temporary tensor without a name: get_tensor_details skips those too
                continue
        return details


class _SignatureBuffers:
    """A signature's input/output tensors as numpy views into the interpreter's own memory.

    Uses the interpreter wrapper's per-subgraph ``tensor()``/``Invoke``/``ResizeInputTensor`` (ai-edge-litert,
    tflite-runtime, tf.lite). The views stay valid until the next ``allocate()``, which replaces them: a resize
    moves every tensor of the subgraph, so callers re-read ``inputs``/``outputs`` after one."""

    def __init__(self, interp, key: str):
        try:
            runner = interp.get_signature_runner(key)
        except ValueError:
            raise RuntimeLiteshipError(f"the model has no {key!r} signature; is it a liteship GPT-2 bundle?") from None
        sig = interp._get_full_signature_list()[key]
        self._interp = interp  # its wrapper is looked up per call: holding it would fail allocate_tensors' check
        self._sub = runner._subgraph_index
        self._in, self._out = sig["inputs"], sig["outputs"]
        details = {d["index"]: d for d in _tensor_details(interp, self._sub)}
        # -1 marks a dimension the graph leaves open (decode's slot count); older bundles have none
        self.shape_signature = {n: [int(x) for x in details[i].get("shape_signature", details[i]["shape"])]
                                for n, i in self._in.items() if i in details}
        self.inputs: dict = {}
        self.outputs: dict = {}

    def resize(self, shapes: dict[str, tuple]) -> None:
        """Give inputs new shapes; takes effect (and invalidates the views) at the next allocate()."""
        for name, shape in shapes.items():
            self._interp._interpreter.ResizeInputTensor(self._in[name], np.array(shape, np.int32), False, self._sub)

    def allocate(self) -> None:
        wrapper = self._interp._interpreter
        try:
            wrapper.AllocateTensors(self._sub)
            self.inputs = {n: wrapper.tensor(self._interp, i, self._sub) for n, i in self._in.items()}
            self.outputs = {n: wrapper.tensor(self._interp, i, self._sub) for n, i in self._out.items()}
        except TypeError:  # an old interpreter whose tensor() has no subgraph argument
            backend = getattr(self._interp, "liteship_backend", "this interpreter")
            raise RuntimeLiteshipError(f"{backend} cannot give per-signature tensor views; GPT-2 generation needs "
                                       "ai-edge-litert (pip install ai-edge-litert)") from None

    def cache(self, n_layer: int):
        """([k_0..k_{L-1}], [v_0..v_{L-1}]) as views, valid until the next allocate()."""
        return [self.inputs[f"k_{l}"] for l in range(n_layer)], [self.inputs[f"v_{l}"] for l in range(n_layer)]

    def invoke(self) -> None:
        self._interp._interpreter.Invoke(self._sub)


def _open_bundle(bundle):
    from liteship.runtime.bundle import Bundle
    return bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


SLOT_STEP = 128  # decode's cache grows this many slots at a time; a growth re-allocates (20-250 ms at 124M)


class KVCacheSession:
    """One sequence's state: the interpreter, the cache in its input buffers, and how many slots are filled.

    Decode attends over ``slots`` cache slots. Bundles whose decode signature leaves the slot count open (all
    made since the graph did) start at SLOT_STEP slots and grow by SLOT_STEP as the text does, so a step reads
    only the cache in use: at 124M int8 a step over 256 slots costs about half one over 1024. ``grow_cache=False``
    (or an older bundle) sizes it to max_context from the start: a constant step time, that of the longest text.
    The default (None) grows the cache except for fp16 bundles, where a growth costs too much (see below).
    """

    def __init__(self, bundle, *, threads: int | None = None, backend: str = "auto", grow_cache: bool | None = None):
        from liteship.runtime.interpreter import create_interpreter

        self.bundle = _open_bundle(bundle)
        if self.bundle.family != "gpt2":
            raise RuntimeLiteshipError(f"{self.bundle.root}: a {self.bundle.family!r} bundle, not a GPT-2 one")
        cfg = self.bundle.config
        self.max_context = int(cfg["max_context"])
        self.prefill_len = int(cfg["prefill_len"])
        self.n_layer = int(cfg["model"]["n_layer"])
        self.vocab_size = int(cfg["model"]["vocab_size"])
        self.threads = threads or default_threads()
        self.interp = create_interpreter(self.bundle.model_path, backend=backend, num_threads=self.threads)
        self._decode = _SignatureBuffers(self.interp, "decode")
        self._prefill = _SignatureBuffers(self.interp, "prefill")
        k0 = self._decode.shape_signature.get("k_0", [])
        self._open_slots = len(k0) == 3 and k0[1] == -1
        if grow_cache and not self._open_slots:
            raise RuntimeLiteshipError(f"{self.bundle.root}: its decode signature has a fixed cache of "
                                       f"{self.max_context} slots (converted before liteship grew caches); "
                                       "re-convert it to grow the cache")
        self.slot_step = SLOT_STEP
        if grow_cache is None:
            # A growth re-prepares decode's XNNPACK subgraph: 20-60 ms for int8 and 30-250 ms for fp32 weights at
            # 124M, but 0.4-1.5 s and +500 MB RSS for fp16 ones, which XNNPACK unpacks to fp32 again each time.
            grow_cache = self._open_slots and self.bundle.quantization != "fp16"
        self.grow_cache = bool(grow_cache) and self.max_context > self.slot_step  # else one step holds it all
        self._min_slots = min(self.slot_step, self.max_context) if self.grow_cache else self.max_context
        self.slots = self.max_context
        if self._open_slots:  # before the first allocation, so the delegate is prepared at this size
            self.slots = self._min_slots
            self._decode.resize(self._decode_shapes(self.slots))
        self.interp.allocate_tensors()  # applies the default (XNNPACK) delegate to every subgraph
        self._decode.allocate()
        self._prefill.allocate()
        self.tokens = TokenTable.from_bundle(self.bundle)
        P = self.prefill_len
        self._prefill_self_mask = np.triu(np.full((P, P), MASK_EMPTY, np.float32), k=1)  # (P, P): t sees <= t
        self._decode_cache = self._decode.cache(self.n_layer)
        self._prefill_cache = self._prefill.cache(self.n_layer)
        self.reset()

    def cache_description(self) -> str:
        return f"grows in steps of {self.slot_step} slots" if self.grow_cache else f"all {self.max_context} slots"

    def _decode_shapes(self, slots: int) -> dict[str, tuple]:
        H, _, hd = self._decode.shape_signature["k_0"]
        shapes = {"mask": (1, slots + 1)}
        for l in range(self.n_layer):
            shapes[f"k_{l}"] = shapes[f"v_{l}"] = (H, slots, hd)
        return shapes

    def _resize_decode(self, slots: int) -> None:
        """Re-allocate decode's cache at ``slots`` slots, keeping the filled ones (a resize moves every buffer)."""
        keep = min(self.length, slots)
        ks, vs = self._decode_cache
        saved = [(k[:, :keep, :].copy(), v[:, :keep, :].copy()) for k, v in zip(ks, vs)]
        self._decode.resize(self._decode_shapes(slots))
        self._decode.allocate()
        self.slots = slots
        self._decode_cache = self._decode.cache(self.n_layer)
        for (k, v), (sk, sv) in zip(zip(*self._decode_cache), saved):
            k[:, :keep, :] = sk
            v[:, :keep, :] = sv
            k[:, keep:, :] = 0.0  # empty slots are masked, but 0 * NaN is NaN: fresh buffers hold garbage
            v[:, keep:, :] = 0.0
        self._write_decode_mask()

    def _ensure_slots(self, needed: int) -> None:
        """Make decode's cache hold at least ``needed`` slots (a multiple of slot_step, at most max_context)."""
        if needed > self.slots:
            self._resize_decode(min(self.max_context, -(-needed // self.slot_step) * self.slot_step))

    def _write_decode_mask(self) -> None:
        mask = self._decode.inputs["mask"]  # (1, slots+1)
        mask[:] = MASK_EMPTY
        mask[0, :self.length] = 0.0
        mask[0, -1] = 0.0  # the new token always sees itself

    def reset(self) -> None:
        """Forget the sequence: every cache slot empty (and a grown cache back to its first size)."""
        self.length = 0
        self._prefill_synced = 0  # slots [0, this) of the prefill signature's cache hold the sequence's K/V
        if self.slots != self._min_slots:
            self._resize_decode(self._min_slots)
        # Empty slots are masked, but 0 * NaN is NaN: fresh buffers hold garbage, so zero them.
        for arrays in (*self._decode_cache, *self._prefill_cache):
            for a in arrays:
                a.fill(0.0)
        self._write_decode_mask()

    def _write(self, k_new, v_new, start: int, n: int, targets) -> None:
        """Copy the K/V of n new tokens (k_new/v_new: (L, H, T, hd)) into cache slots start..start+n-1."""
        for ks, vs in targets:
            for l in range(self.n_layer):
                ks[l][:, start:start + n, :] = k_new[l, :, :n, :]  # (H, n, hd)
                vs[l][:, start:start + n, :] = v_new[l, :, :n, :]  # (H, n, hd)

    def prefill(self, ids: Iterable[int], *, all_logits: bool = True) -> np.ndarray:
        """Feed tokens in chunks of P; returns their logits (n, V), or only the last token's (1, V) when
        ``all_logits`` is false (generation: saves copying up to P x V floats per chunk). The sequence continues
        from self.length."""
        ids = np.asarray(list(ids), dtype=np.int32)
        C, P = self.max_context, self.prefill_len
        if self.length + len(ids) > C:
            raise RuntimeLiteshipError(f"{self.length + len(ids)} tokens do not fit the bundle's context of {C}")
        pre = self._prefill.inputs
        out = []
        for s in range(0, len(ids), P):
            chunk = ids[s:s + P]
            n, start = len(chunk), self.length
            if self._prefill_synced < start:  # earlier tokens came through decode or an earlier chunk
                a = self._prefill_synced
                (dk, dv), (pk, pv) = self._decode_cache, self._prefill_cache
                for l in range(self.n_layer):
                    pk[l][:, a:start, :] = dk[l][:, a:start, :]
                    pv[l][:, a:start, :] = dv[l][:, a:start, :]
                self._prefill_synced = start
            embeds = pre["embeds"]  # (P, E); rows past n are padding whose outputs are ignored
            embeds[n:] = 0.0
            self.tokens.rows(chunk, embeds)
            pre["positions"][:] = np.minimum(np.arange(start, start + P), C - 1)
            mask = pre["mask"]  # (P, C+P)
            mask[:, :C] = MASK_EMPTY
            mask[:, :start] = 0.0
            mask[:, C:] = self._prefill_self_mask
            self._prefill.invoke()
            o = self._prefill.outputs
            if all_logits or s + P >= len(ids):
                out.append(np.array(o["logits"][:n] if all_logits else o["logits"][n - 1:n]))
            self._ensure_slots(start + n)
            self._write(o["k_new"], o["v_new"], start, n, [self._decode_cache])  # decode's buffers hold the sequence
            self._decode.inputs["mask"][0, start:start + n] = 0.0
            self.length += n
        return np.concatenate(out) if out else np.zeros((0, self.vocab_size), np.float32)

    def decode(self, token: int) -> np.ndarray:
        """Feed one token at position self.length; returns its logits (V,)."""
        pos = self.length
        if pos >= self.max_context:
            raise RuntimeLiteshipError(f"the context of {self.max_context} tokens is full")
        self._ensure_slots(pos + 1)  # the new token's own row is written after the step, into slot pos
        dec = self._decode.inputs
        self.tokens.rows(np.array([token]), dec["embeds"])
        dec["position"][0] = pos
        self._decode.invoke()
        o = self._decode.outputs
        self._write(o["k_new"], o["v_new"], pos, 1, [self._decode_cache])
        dec["mask"][0, pos] = 0.0
        self.length += 1
        return np.array(o["logits"][0])

    def advance_empty(self, n: int) -> None:
        """Mark n more slots filled without computing them (benchmarks: a step's cost does not depend on values)."""
        if self.length + n > self.max_context:
            raise RuntimeLiteshipError(f"cannot advance past the context of {self.max_context}")
        self._ensure_slots(self.length + n)
        self._decode.inputs["mask"][0, self.length:self.length + n] = 0.0
        self.length += n


def choose_token(logits: np.ndarray, *, temperature: float, top_k: int, top_p: float,
                 rng: np.random.Generator) -> int:
    """Greedy when temperature <= 0; else sample from softmax(logits / T) restricted to top-k, then top-p."""
    if temperature <= 0:
        return int(np.argmax(logits))
    x = logits.astype(np.float64) / temperature
    if 0 < top_k < x.size:
        kth = np.partition(x, -top_k)[-top_k]
        x = np.where(x >= kth, x, -np.inf)
    p = np.exp(x - x.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, top_p) + 1)]  # smallest set reaching top_p
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(p.size, p=p))


@dataclass
class Generation:
    text: str
    token_ids: list = field(default_factory=list)
    prompt_tokens: int = 0
    finish_reason: str = "length"  # "eos" | "stop" | "length" | "context"
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


class TextGenerator:
    """Generate text from a GPT-2 bundle: ``TextGenerator(bundle).generate("Hello", max_new_tokens=20)``."""

    def __init__(self, bundle, *, threads: int | None = None, backend: str = "auto", grow_cache: bool | None = None):
        self.session = KVCacheSession(bundle, threads=threads, backend=backend, grow_cache=grow_cache)
        self.bundle = self.session.bundle
        self.config = self.bundle.config
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from liteship.runtime.tokenizer import ByteLevelBPETokenizer
            self._tokenizer = ByteLevelBPETokenizer.from_bundle(self.bundle)
        return self._tokenizer

    def _defaults(self, **given) -> dict:
        gen = self.config.get("generation") or {}
        out = {}
        for key, value in given.items():
            out[key] = gen.get(key) if value is None else value
        if given.get("temperature") is None and not gen.get("do_sample", False):
            out["temperature"] = 0.0  # the checkpoint's default is greedy
        return out

    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int | None = None, *,
                     temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                     seed: int | None = None, stop_on_eos: bool = True, truncate: bool = False,
                     result: Generation | None = None) -> Iterator[int]:
        """Yield new token ids. prefill(prompt) once (in chunks), then one decode per further token."""
        o = self._defaults(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
        max_new, C = int(o["max_new_tokens"]), self.session.max_context
        ids = list(prompt_ids)
        if not ids:
            raise RuntimeLiteshipError("the prompt is empty; GPT-2 needs at least one token to continue")
        if len(ids) >= C:
            if not truncate:
                raise RuntimeLiteshipError(
                    f"the prompt is {len(ids)} tokens; this bundle's context is {C} (pass truncate=True / --truncate "
                    "to keep its end)")
            ids = ids[-max(1, C - max_new):]
        rng = np.random.default_rng(seed)
        eos = self.config.get("eos_token_id")
        result = result if result is not None else Generation("")
        result.prompt_tokens = len(ids)
        sess = self.session
        sess.reset()
        t0 = time.perf_counter()
        logits = sess.prefill(ids, all_logits=False)[-1]
        result.prefill_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            for i in range(max_new):
                token = choose_token(logits, temperature=float(o["temperature"]), top_k=int(o["top_k"] or 0),
                                     top_p=float(o["top_p"] if o["top_p"] is not None else 1.0), rng=rng)
                if stop_on_eos and token == eos:
                    result.finish_reason = "eos"
                    return
                result.token_ids.append(token)
                yield token
                if i + 1 == max_new:
                    result.finish_reason = "length"
                    return
                if sess.length >= C:
                    result.finish_reason = "context"
                    return
                logits = sess.decode(token)
        finally:
            result.decode_seconds = time.perf_counter() - t0

    def stream(self, prompt: str, max_new_tokens: int | None = None, *, stop: Iterable[str] = (),
               result: Generation | None = None, **options) -> Iterator[str]:
        """Yield text pieces as they are generated; stops before any of ``stop`` (which is never emitted)."""
        stop = [s for s in stop if s]
        decoder = self.tokenizer.stream_decoder()
        result = result if result is not None else Generation("")
        pending = ""  # text that might be the start of a stop string
        gen = self.generate_ids(self.tokenizer.encode(prompt), max_new_tokens, result=result, **options)
        for token in gen:
            pending += decoder.push(token)
            cut = min((pending.find(s) for s in stop if s in pending), default=-1)
            if cut >= 0:
                result.finish_reason = "stop"
                gen.close()
                if pending[:cut]:
                    result.text += pending[:cut]
                    yield pending[:cut]
                return
            hold = max((_overlap(pending, s) for s in stop), default=0)
            ready, pending = pending[:len(pending) - hold], pending[len(pending) - hold:]
            if ready:
                result.text += ready
                yield ready
        pending += decoder.flush()
        if pending:
            result.text += pending
            yield pending

    def generate(self, prompt: str, max_new_tokens: int | None = None, *, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop: Iterable[str] = (), stream: Callable[[str], None] | None = None,
                 truncate: bool = False) -> Generation:
        """Continue ``prompt``; ``stream`` (if given) is called with each piece of text as it is generated."""
        result = Generation("")
        for piece in self.stream(prompt, max_new_tokens, stop=stop, result=result, temperature=temperature,
                                 top_k=top_k, top_p=top_p, seed=seed, truncate=truncate):
            if stream is not None:
                stream(piece)
        return result


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of stop."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


def benchmark_generation(bundle_path, *, threads: int | None = None, backend: str = "auto", prompt_tokens: int = 128,
                         new_tokens: int = 32, context: int = 256, contexts: Iterable[int] = (),
                         seed: int = 0, repeats: int = 3, grow_cache: bool | None = None) -> dict:
    """Prefill and decode speed of a GPT-2 bundle: the ``generation`` block of liteship.bench/1.

    Prefill: ``prompt_tokens`` random ids from an empty cache. Decode: ``new_tokens`` greedy steps ending at
    ``context`` filled slots (slots before are marked filled without being computed: a step's cost depends on
    the shapes, not the cached values). ``contexts`` adds decode rates at other context lengths. Each rate is the
    best of ``repeats`` rounds (prefill too), the contexts taking turns, so a burst of other work on the device
    hits one round rather than one context. ``grow_cache`` as in KVCacheSession (default: grow where the bundle allows)."""
    sess = KVCacheSession(bundle_path, threads=threads, backend=backend, grow_cache=grow_cache)
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
        "threads": sess.threads,
        "peak_rss_bytes": peak_rss_bytes(),
    }
