"""Quality of a GPT-2 bundle on a text: perplexity, and agreement with a reference model (no TensorFlow).

The text is tokenized with the bundle's own tokenizer and cut into windows of the bundle's context C. Each window
runs from an empty KV cache through ``prefill`` in chunks of the bundle's prefill length, the cache carrying over
from chunk to chunk, so a token is predicted from up to C - 1 tokens before it. A window starts at the previous
window's last token, so every token after the first is predicted exactly once.

A reference (another bundle, e.g. the fp32 one, or the checkpoint the bundle came from) sees the same windows;
the result then also holds the share of positions where both pick the same greedy next token and the mean KL
divergence KL(reference || bundle) of the next-token distributions.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from liteship.errors import RuntimeLiteshipError
from liteship.runtime.bundle import is_bundle
from liteship.runtime.files import read_text

# A window's logits, (T, V), from an empty cache: what both a bundle and a reference provide.
WindowLogits = Callable[[np.ndarray], np.ndarray]


def windows(n_tokens: int, context: int) -> list[tuple[int, int]]:
    """[start, end) spans of at most ``context`` tokens, each starting at the previous one's last token."""
    if context < 2:
        raise RuntimeLiteshipError(f"a context of {context} tokens cannot predict anything")
    spans, start = [], 0
    while start < n_tokens - 1:
        spans.append((start, min(start + context, n_tokens)))
        start += context - 1
    return spans


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def bundle_logits(session) -> WindowLogits:
    """A KVCacheSession as a window -> logits function: reset, then prefill the whole window."""
    def run(ids: np.ndarray) -> np.ndarray:
        session.reset()
        return session.prefill(ids, all_logits=True)  # (T, V)
    return run


def load_reference(path: str | Path, *, context: int, threads: int | None = None,
                   backend: str = "auto") -> tuple[WindowLogits, str]:
    """(window -> logits, description) for a bundle or a Hugging Face GPT-2 checkpoint folder.

    A checkpoint is run by the converter's own TensorFlow model (liteship.convert, imported only here and only
    then): the runtime itself never needs TensorFlow."""
    path = Path(path)
    if is_bundle(path):
        from liteship.runtime.generate import KVCacheSession

        session = KVCacheSession(path, threads=threads, backend=backend)
        if session.max_context < context:
            raise RuntimeLiteshipError(f"reference {path}: its context of {session.max_context} tokens is shorter "
                                       f"than the bundle's {context}")
        return bundle_logits(session), f"{path} ({session.bundle.quantization})"
    if (path / "config.json").is_file():
        try:
            reference = importlib.import_module("liteship.convert.gpt2.reference")
        except ImportError as exc:
            raise RuntimeLiteshipError(f"reference {path}: a checkpoint reference needs the converter "
                                       f"(pip install 'liteship[convert]'): {exc}") from None
        return reference.checkpoint_logits(path, context=context), f"{path} (checkpoint)"
    raise RuntimeLiteshipError(f"reference {path}: neither a bundle nor a GPT-2 checkpoint folder (no manifest.json "
                               "or config.json)")


def evaluate_ids(model: WindowLogits, ids: Sequence[int], *, context: int, reference: WindowLogits | None = None,
                 progress: Callable[[int], None] | None = None) -> dict:
    """Perplexity of ``model`` over ``ids`` in windows of ``context``; with ``reference``, its perplexity too,
    greedy next-token agreement and mean KL(reference || model) per predicted position."""
    ids = np.asarray(ids, dtype=np.int32)
    spans = windows(len(ids), context)
    if not spans:
        raise RuntimeLiteshipError(f"the text is {len(ids)} token(s); perplexity needs at least 2")
    nll = ref_nll = kl = 0.0
    agree = predicted = 0
    for start, end in spans:
        window = ids[start:end]
        targets = window[1:]  # (T-1,) each predicted from the tokens before it
        rows = np.arange(len(targets))
        logp = log_softmax(model(window)[:-1])  # (T-1, V)
        nll -= float(logp[rows, targets].sum())
        predicted += len(targets)
        if reference is not None:
            ref_logp = log_softmax(reference(window)[:-1])  # (T-1, V)
            ref_nll -= float(ref_logp[rows, targets].sum())
            agree += int((ref_logp.argmax(-1) == logp.argmax(-1)).sum())
            kl += float((np.exp(ref_logp) * (ref_logp - logp)).sum())
        if progress:
            progress(1)
    result = {"tokens": int(len(ids)), "predicted": predicted, "windows": len(spans), "context": int(context),
              "nll": nll / predicted, "perplexity": float(np.exp(nll / predicted))}
    if reference is not None:
        ref_ppl = float(np.exp(ref_nll / predicted))
        result["reference"] = {"perplexity": ref_ppl,
                               "perplexity_change_pct": 100.0 * (result["perplexity"] / ref_ppl - 1.0),
                               "top1_agreement": agree / predicted, "mean_kl": kl / predicted}
    return result


def evaluate_text(bundle, text_file: str | Path, *, reference: str | Path | None = None,
                  threads: int | None = None, backend: str = "auto",
                  progress: Callable[[int], None] | None = None, on_windows: Callable[[int], None] | None = None
                  ) -> dict:
    """``liteship eval gpt2``: the bundle's perplexity over TEXT_FILE (and agreement with ``reference``).
    ``on_windows(n)`` is told how many windows there are before the first runs; ``progress(1)`` after each."""
    from liteship.runtime.bundle import Bundle
    from liteship.runtime.generate import KVCacheSession
    from liteship.runtime.tokenizer import ByteLevelBPETokenizer

    bundle = Bundle.open(bundle)
    if bundle.family != "gpt2":
        raise RuntimeLiteshipError(f"{bundle.root}: a {bundle.family!r} bundle, not a GPT-2 one")
    text = read_text(text_file, error=RuntimeLiteshipError, empty_ok=True)  # the text first: fail fast
    ids = ByteLevelBPETokenizer.from_bundle(bundle).encode(text)
    if len(ids) < 2:
        raise RuntimeLiteshipError(f"{text_file}: {len(ids)} token(s); perplexity needs at least 2")
    session = KVCacheSession(bundle, threads=threads, backend=backend)
    context = session.max_context
    ref, ref_name = load_reference(reference, context=context, threads=threads, backend=backend) \
        if reference is not None else (None, None)
    if on_windows:
        on_windows(len(windows(len(ids), context)))
    result = evaluate_ids(bundle_logits(session), ids, context=context, reference=ref, progress=progress)
    result = {"bundle": str(session.bundle.root), "quantization": session.bundle.quantization,
              "text": str(text_file), **result}
    if ref is not None:
        result["reference"] = {"source": ref_name, **result["reference"]}
    return result

