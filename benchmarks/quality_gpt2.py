"""GPT-2 quality, honestly: train a small GPT-2 on real English, hold part of it out, and compare the held-out
perplexity of the PyTorch model with each liteship TFLite variant (fp32, fp16, dynamic-int8), in one run.

    .venv/bin/python benchmarks/quality_gpt2.py              # 4 layers x 256, ~5 min of training
    .venv/bin/python benchmarks/quality_gpt2.py --minutes 10
    .venv/bin/python benchmarks/quality_gpt2.py --quick      # tiny model, seconds of training: smoke test

Data: `pydoc_data.topics`, Python's own documentation (English prose and code), shipped with every Python. It is
split BY DOCUMENT (a seeded shuffle of the topic names; documents go to the held-out set until it holds
--holdout of the characters), so no held-out paragraph was ever seen in training, not even by the tokenizer,
which is a byte-level BPE trained on the training documents only.

Perplexity: the held-out documents are joined with <|endoftext|> and cut into non-overlapping windows of the
model's context; each window starts from an empty cache and every token after the first is predicted
teacher-forced. PyTorch runs GPT2LMHeadModel; liteship runs the bundle's `prefill` signature through the runtime's
KVCacheSession in chunks of --prefill-len, so the KV cache is exercised across chunks. All variants score the same
tokens, with log-softmax in float64. Targets: fp16 within 0.1% of fp32, dynamic-int8 within 2%.

Writes the Markdown table to benchmarks/results/gpt2_quality.md (or --quick: gpt2_quality_quick.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.gpt2_tokenizer_fixture: the same local BPE trainer the tests use

import numpy as np  # noqa: E402

from liteship.runtime.bench import machine_summary  # noqa: E402
from liteship.runtime.files import write_atomic, write_json_atomic  # noqa: E402

QUANTS = ("fp32", "fp16", "dynamic-int8", "int4")
# Allowed relative change of perplexity against liteship fp32 (the targets); fp32 itself is held to PyTorch.
TARGETS = {"fp32": 0.001, "fp16": 0.001, "dynamic-int8": 0.02, "int4": 0.05}


@dataclass(frozen=True)
class Setup:
    n_layer: int
    n_head: int
    n_embd: int
    context: int  # n_positions = the bundle's max_context = the evaluation window
    vocab_size: int  # BPE symbols + merges; <|endoftext|> comes on top
    batch: int
    lr: float
    minutes: float  # default training budget


SETUPS = {
    "full": Setup(n_layer=4, n_head=4, n_embd=256, context=128, vocab_size=2048, batch=16, lr=2e-3, minutes=5.0),
    # ~0.2M params: enough to learn something in seconds, small enough to convert three times in a minute
    "quick": Setup(n_layer=2, n_head=2, n_embd=64, context=64, vocab_size=512, batch=8, lr=3e-3, minutes=0.25),
}


def split_documents(seed: int, holdout: float) -> tuple[dict[str, str], dict[str, str]]:
    """Topic name -> text for training and held-out; held-out gets whole documents until `holdout` of the chars."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    random.Random(seed).shuffle(names)
    total = sum(len(topics[n]) for n in names)
    held: dict[str, str] = {}
    for name in names:
        if sum(map(len, held.values())) >= holdout * total:
            break
        if len(topics[name]) > 0.5 * holdout * total:
            continue  # one huge document would make the held-out set a single topic
        held[name] = topics[name]
    train = {n: topics[n] for n in sorted(topics) if n not in held}
    return train, dict(sorted(held.items()))


def token_stream(tok, texts, eos_id: int) -> np.ndarray:
    ids: list[int] = []
    for text in texts:
        ids.extend(tok.encode(text))
        ids.append(eos_id)
    return np.asarray(ids, dtype=np.int64)


def windows(stream: np.ndarray, context: int) -> list[np.ndarray]:
    """Non-overlapping windows; a last partial window is kept if it predicts at least one token."""
    return [stream[s:s + context] for s in range(0, len(stream), context) if len(stream[s:s + context]) >= 2]


def nll_of_logits(logits: np.ndarray, window: np.ndarray) -> float:
    """Sum of -log p(window[t+1] | window[..t]) from logits (n, V), in float64."""
    z = logits[:-1].astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-logp[np.arange(len(window) - 1), window[1:]].sum())


def unigram_perplexity(train_stream: np.ndarray, held_stream: np.ndarray, vocab_size: int) -> float:
    """Perplexity of add-one-smoothed training token frequencies on the held-out tokens (after the first of each
    window, approximately): the floor a model must beat to have learned anything beyond frequencies."""
    counts = np.bincount(train_stream, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return math.exp(-logp[held_stream].mean())


def train(model, stream: np.ndarray, setup: Setup, *, seconds: float, steps: int | None, seed: int, log) -> dict:
    """AdamW on random windows of the training stream; cosine learning rate over the step or time budget."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=setup.lr, weight_decay=0.01, betas=(0.9, 0.95))
    model.train()
    start = time.perf_counter()
    step, losses = 0, []
    while True:
        elapsed = time.perf_counter() - start
        progress = step / steps if steps else elapsed / seconds
        if progress >= 1.0:
            break
        warm = min(1.0, (step + 1) / 20)
        lr = setup.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = rng.integers(0, len(stream) - setup.context, size=setup.batch)
        batch = torch.from_numpy(np.stack([stream[s:s + setup.context] for s in starts]))  # (B, T)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            log(f"  step {step}: loss {np.mean(losses[-50:]):.3f} ({time.perf_counter() - start:.0f} s)")
    model.eval()
    return {"steps": step, "seconds": round(time.perf_counter() - start, 1),
            "tokens_seen": step * setup.batch * setup.context,
            "final_loss": round(float(np.mean(losses[-20:])), 3) if losses else None}


def perplexity_torch(model, wins: list[np.ndarray]) -> tuple[float, int, list[np.ndarray]]:
    import torch

    total, count, first_logits = 0.0, 0, []
    with torch.no_grad():
        for w in wins:
            logits = model(input_ids=torch.from_numpy(w)[None]).logits[0].numpy()  # (n, V)
            if not first_logits:
                first_logits.append(logits)
            total += nll_of_logits(logits, w)
            count += len(w) - 1
    return math.exp(total / count), count, first_logits


def perplexity_tflite(bundle: Path, wins: list[np.ndarray], threads: int) -> tuple[float, int, list[np.ndarray]]:
    from liteship.runtime.generate import KVCacheSession

    session = KVCacheSession(bundle, threads=threads)
    total, count, first_logits = 0.0, 0, []
    for w in wins:
        session.reset()
        logits = session.prefill(w.astype(np.int32))  # (n, V), prefill chunks of prefill_len through the cache
        if not first_logits:
            first_logits.append(logits)
        total += nll_of_logits(logits, w)
        count += len(w) - 1
    return math.exp(total / count), count, first_logits


def tflite_available() -> tuple[bool, str]:
    try:
        from liteship.convert.gpt2.export import export  # noqa: F401
        from liteship.runtime.generate import KVCacheSession  # noqa: F401
    except ImportError as e:
        return False, f"liteship's GPT-2 converter/runtime is not importable ({e})"
    return True, ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, seconds of training (smoke test)")
    ap.add_argument("--minutes", type=float, help="training time budget (default: 5, quick: 0.25)")
    ap.add_argument("--steps", type=int, help="train a fixed number of steps instead of a time budget")
    ap.add_argument("--holdout", type=float, default=0.1, help="fraction of characters held out, by document")
    ap.add_argument("--prefill-len", type=int, help="prefill chunk of the bundles (default: context / 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-windows", type=int, help="evaluate only the first N held-out windows")
    ap.add_argument("--work-dir", type=Path, help="keep the checkpoint and bundles here (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true",
                    help="skip training: reuse the checkpoint an earlier run with the same settings left in --work-dir")
    ap.add_argument("--out", type=Path, help="Markdown output (default: benchmarks/results/gpt2_quality[_quick].md)")
    args = ap.parse_args(argv)
    if args.reuse and not args.work_dir:
        ap.error("--reuse needs --work-dir")

    setup = SETUPS["quick" if args.quick else "full"]
    minutes = setup.minutes if args.minutes is None else args.minutes
    prefill_len = args.prefill_len or setup.context // 2
    out = args.out or ROOT / "benchmarks" / "results" / f"gpt2_quality{'_quick' if args.quick else ''}.md"
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="liteship-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    import torch
    import transformers

    from liteship.runtime.tokenizer import ByteLevelBPETokenizer
    from tests.gpt2_tokenizer_fixture import EOS_TOKEN, make_tokenizer_files

    torch.set_num_threads(args.threads)

    # ---- data and tokenizer (trained on the training documents only)
    train_docs, held_docs = split_documents(args.seed, args.holdout)
    log(f"held out {len(held_docs)} of {len(train_docs) + len(held_docs)} documents: {', '.join(held_docs)}")
    ckpt = work / "checkpoint"
    trained_path = work / "training.json"  # what --reuse needs to trust the checkpoint left in --work-dir
    if args.reuse:
        saved = json.loads(trained_path.read_text()) if trained_path.is_file() else None
        wanted = {"setup": asdict(setup), "seed": args.seed, "holdout": args.holdout}
        if saved is None or {k: saved[k] for k in wanted} != wanted:
            raise SystemExit(f"--reuse: no checkpoint trained with these settings in {work}")
        tok_files = {"tokenizer_json": ckpt / "tokenizer.json"}  # as saved by transformers, not retrained
    else:
        tok_files = make_tokenizer_files(work / "tokenizer", vocab_size=setup.vocab_size, texts=train_docs.values())
    tok = ByteLevelBPETokenizer.from_tokenizer_json(tok_files["tokenizer_json"])
    hf_tok = transformers.GPT2TokenizerFast(tokenizer_file=str(tok_files["tokenizer_json"]))
    eos_id = tok.eos_token_id
    train_stream = token_stream(tok, train_docs.values(), eos_id)
    held_stream = token_stream(tok, held_docs.values(), eos_id)
    same_ids = all(tok.encode(t) == hf_tok(t)["input_ids"] for t in held_docs.values())
    wins = windows(held_stream, setup.context)[:args.max_windows]
    log(f"tokens: {len(train_stream)} training, {len(held_stream)} held out ({len(wins)} windows); "
        f"runtime tokenizer == transformers on held-out text: {same_ids}")

    # ---- train and save a Hugging Face checkpoint as fine-tuning leaves it
    config = transformers.GPT2Config(
        n_layer=setup.n_layer, n_head=setup.n_head, n_embd=setup.n_embd, n_positions=setup.context,
        vocab_size=tok.vocab_size, bos_token_id=eos_id, eos_token_id=eos_id,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # minutes of training underfit: dropout only slows it
    torch.manual_seed(args.seed)
    if args.reuse:
        model = transformers.GPT2LMHeadModel.from_pretrained(ckpt).eval()
        stats = saved["training"]
        log(f"reusing the checkpoint in {ckpt} ({stats['steps']} steps)")
    else:
        model = transformers.GPT2LMHeadModel(config)
        log(f"training for {f'{args.steps} steps' if args.steps else f'{minutes} min'}")
        stats = train(model, train_stream, setup, seconds=minutes * 60, steps=args.steps, seed=args.seed, log=log)
        log(f"trained {stats['steps']} steps in {stats['seconds']} s, final loss {stats['final_loss']}")
        model.save_pretrained(ckpt)
        hf_tok.save_pretrained(ckpt)  # tokenizer.json + tokenizer_config.json (transformers 5 writes no vocab.json)
        for role in ("vocab", "merges"):  # and GPT-2's classic pair, as original checkpoints carry it
            shutil.copy(tok_files[role], ckpt / tok_files[role].name)
        trained_path.write_text(json.dumps({"setup": asdict(setup), "seed": args.seed, "holdout": args.holdout,
                                            "training": stats}, indent=2) + "\n")
    n_params = sum(p.numel() for p in model.parameters())

    rows = []
    ppl_pt, count, pt_first = perplexity_torch(model, wins)
    rows.append({"name": "PyTorch fp32 (transformers)", "quant": None, "ppl": ppl_pt, "size": None,
                 "convert_s": None})
    log(f"PyTorch perplexity {ppl_pt:.4f} over {count} tokens")
    del model

    # ---- liteship bundles
    ok, why_not = tflite_available()
    if ok:
        from liteship.convert.gpt2.export import export

        for quant in QUANTS:
            log(f"converting {quant}")
            try:
                report = export(ckpt, work / f"bundle-{quant}", quant=quant, max_context=setup.context,
                                prefill_len=prefill_len)
                ppl, n, first = perplexity_tflite(report.bundle, wins, args.threads)
            except Exception as e:  # keep the other variants' (and the trained model's) figures
                message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                rows.append({"name": f"liteship {quant}", "quant": quant, "error": f"{type(e).__name__}: {message}"})
                log(f"{quant} FAILED: {rows[-1]['error']}")
                continue
            assert n == count, (n, count)
            max_diff = float(np.abs(first[0] - pt_first[0]).max())
            rows.append({"name": f"liteship {quant}", "quant": quant, "ppl": ppl, "size": report.tflite_bytes,
                         "convert_s": report.seconds, "max_logit_diff": max_diff})
            log(f"{quant}: perplexity {ppl:.4f}, max |logit - PyTorch| on window 0: {max_diff:.2e}")

    # ---- report
    fp32 = next((r["ppl"] for r in rows if r["quant"] == "fp32" and "error" not in r), None)
    lines = [
        "# GPT-2 quality: held-out perplexity, PyTorch vs liteship TFLite",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {machine_summary()}",
        f"- command: `python benchmarks/quality_gpt2.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- data: `pydoc_data.topics` (Python {platform.python_version()}), split by document (seed {args.seed}): "
        f"{len(train_docs)} training documents ({len(train_stream)} tokens), {len(held_docs)} held out "
        f"({len(held_stream)} tokens): {', '.join(held_docs)}",
        f"- tokenizer: byte-level BPE, {tok.vocab_size} tokens incl. `{EOS_TOKEN}`, trained on the training "
        f"documents only; liteship's runtime tokenizer ids equal transformers' on the held-out text: "
        f"{'yes' if same_ids else 'NO'}",
        f"- model: GPT-2 n_layer={setup.n_layer}, n_head={setup.n_head}, n_embd={setup.n_embd}, "
        f"context={setup.context}, {n_params / 1e6:.2f}M params; AdamW, batch {setup.batch}, peak lr {setup.lr}, "
        f"{stats['steps']} steps in {stats['seconds']} s ({stats['tokens_seen']} tokens seen), "
        f"final training loss {stats['final_loss']}",
        f"- evaluation: {len(wins)} non-overlapping {setup.context}-token windows, {count} predicted tokens; "
        f"liteship through the bundle's `prefill` signature in chunks of {prefill_len} (KV cache across chunks), "
        f"{args.threads} threads",
        "",
        "| model | .tflite size | convert s | perplexity | vs liteship fp32 | target | max abs logit diff vs PyTorch (window 0) |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        if r["quant"] is None:
            rel = f"{(r['ppl'] / fp32 - 1) * 100:+.5f}%" if fp32 else "-"
            lines.append(f"| {r['name']} | - | - | {r['ppl']:.5f} | {rel} | - | - |")
            continue
        if "error" in r or fp32 is None:
            lines.append(f"| {r['name']} | - | - | - | - | FAILED: {r.get('error', 'no fp32 reference')} | - |")
            continue
        rel = r["ppl"] / fp32 - 1
        target = TARGETS[r["quant"]]
        against = "PyTorch" if r["quant"] == "fp32" else "fp32"
        value = r["ppl"] / ppl_pt - 1 if r["quant"] == "fp32" else rel
        verdict = "PASS" if abs(value) <= target else "FAIL"
        lines.append(f"| {r['name']} | {r['size'] / 1e6:.2f} MB | {r['convert_s']:.1f} | {r['ppl']:.5f} | "
                     f"{rel * 100:+.5f}% | within {target * 100:g}% of {against}: {verdict} ({value * 100:+.5f}%) | "
                     f"{r['max_logit_diff']:.2e} |")
    unigram = unigram_perplexity(train_stream, held_stream, tok.vocab_size)
    lines += ["", f"Reference: a unigram model of the training tokens scores {unigram:.1f} on the held-out tokens."]
    if ppl_pt > 0.5 * unigram:
        lines += ["", f"**Warning: the model is under-trained** ({stats['steps']} steps; perplexity {ppl_pt:.1f} is "
                  "not far below the unigram baseline). Quantization errors of a barely trained model understate "
                  "those of a real one: rerun with more --minutes on a quieter machine."]
    if not ok:
        lines += ["", f"**TFLite part pending**: {why_not}. Only the PyTorch perplexity is reported."]
    text = "\n".join(lines) + "\n"
    print(text)
    write_atomic(out, text, mkdir=True)
    json_path = write_json_atomic(out.with_suffix(".json"), {
        "setup": asdict(setup), "training": stats, "rows": rows, "windows": len(wins), "tokens_scored": count,
        "held_out": list(held_docs)})
    log(f"wrote {out} and {json_path}")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    failed = [r for r in rows if r["quant"] and ("error" in r or fp32 is None or abs(
        (r["ppl"] / (ppl_pt if r["quant"] == "fp32" else fp32)) - 1) > TARGETS[r["quant"]])]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
