"""The int8 KV cache's accuracy, with and without per-channel equalization, on a trained GPT-2 and on the same
model given K/V outlier channels: held-out perplexity and next-token agreement against the float32 cache.

    .venv/bin/python benchmarks/kv_int8_gpt2.py --work-dir WORK --minutes 3      # trains quality_gpt2.py's model
    .venv/bin/python benchmarks/kv_int8_gpt2.py --work-dir WORK --reuse          # the checkpoint left in WORK

Model and data: benchmarks/quality_gpt2.py's (4 layers x 256 trained on `pydoc_data.topics`, documents held out);
its --work-dir checkpoint can be reused here. The outlier model is that checkpoint rescaled without changing what
it computes (tests/gpt2_fixtures.py add_kv_outliers: one K and one V channel per head times --outlier-gain, their
Q and c_proj counterparts divided by it), the shape trained GPT-2's outlier channels have. Calibration text: the
training documents (the first 8192 tokens, kv_int8.CALIBRATION_TOKENS).

Each model and weight format is converted three times: float32 cache, int8 cache without equalization, int8 cache
with it (the default). Every bundle scores the same held-out windows two ways: `prefill` in chunks of the
bundle's prefill_len (context / 2), and `decode` (the first token by prefill, every later one by decode, so each
prediction reads all earlier tokens from the cache, as generation does). Agreement: the share of positions whose
most likely next token is the float32 cache's.

Writes benchmarks/results/gpt2_kv_int8_accuracy.md (or --out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import quality_gpt2 as quality  # noqa: E402

from liteship.runtime.bench import machine_summary  # noqa: E402
from liteship.runtime.files import write_atomic  # noqa: E402

# name -> export options, and kv_equalize.HEADROOM for the equalized ones
CACHES = {"float": ({}, None), "int8": ({"kv_cache": "int8", "kv_equalize": False}, None),
          "int8 equalized, no headroom": ({"kv_cache": "int8"}, 1.0),
          "int8 equalized": ({"kv_cache": "int8"}, 2.0)}


def train_or_reuse(work: Path, setup, args, log):
    """The quality benchmark's checkpoint in WORK/checkpoint: trained here, or the one an earlier run left."""
    import torch
    import transformers

    from liteship.runtime.tokenizer import ByteLevelBPETokenizer
    from tests.gpt2_tokenizer_fixture import make_tokenizer_files

    train_docs, held_docs = quality.split_documents(args.seed, 0.1)
    ckpt = work / "checkpoint"
    if args.reuse:
        tok = ByteLevelBPETokenizer.from_tokenizer_json(ckpt / "tokenizer.json")
        stats = json.loads((work / "training.json").read_text())["training"]
        return ckpt, tok, train_docs, held_docs, stats
    files = make_tokenizer_files(work / "tokenizer", vocab_size=setup.vocab_size, texts=train_docs.values())
    tok = ByteLevelBPETokenizer.from_tokenizer_json(files["tokenizer_json"])
    hf_tok = transformers.GPT2TokenizerFast(tokenizer_file=str(files["tokenizer_json"]))
    stream = quality.token_stream(tok, train_docs.values(), tok.eos_token_id)
    config = transformers.GPT2Config(
        n_layer=setup.n_layer, n_head=setup.n_head, n_embd=setup.n_embd, n_positions=setup.context,
        vocab_size=tok.vocab_size, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(args.seed)
    model = transformers.GPT2LMHeadModel(config)
    stats = quality.train(model, stream, setup, seconds=args.minutes * 60, steps=args.steps, seed=args.seed, log=log)
    model.save_pretrained(ckpt)
    hf_tok.save_pretrained(ckpt)
    for role in ("vocab", "merges"):
        shutil.copy(files[role], ckpt / files[role].name)
    (work / "training.json").write_text(json.dumps({"setup": asdict(setup), "seed": args.seed,
                                                    "holdout": 0.1, "training": stats}, indent=2) + "\n")
    return ckpt, tok, train_docs, held_docs, stats


def outlier_checkpoint(ckpt: Path, out: Path, gain: float) -> Path:
    """The checkpoint with one K and one V outlier channel per head (the function unchanged)."""
    import transformers

    from tests.gpt2_fixtures import add_kv_outliers

    model = transformers.GPT2LMHeadModel.from_pretrained(ckpt).eval()
    hd = model.config.n_embd // model.config.n_head
    add_kv_outliers(model, channels=tuple(h * hd + (7 * h + 5) % hd for h in range(model.config.n_head)), gain=gain)
    shutil.copytree(ckpt, out, dirs_exist_ok=True)
    model.save_pretrained(out)
    return out


def channel_report(ckpt: Path, calibration: Path, held_windows) -> dict[str, list[float]]:
    """Per layer, for K and V: the widest channel's range over the median channel's on the calibration text
    ("spread"), and how far the held-out text goes past a channel's calibration range, at most ("over")."""
    from liteship.convert.gpt2.export import runtime_tokenizer
    from liteship.convert.gpt2.kv_int8 import calibration_windows, kv_channel_ranges
    from liteship.convert.gpt2.weights import load_checkpoint

    cfg, params, _ = load_checkpoint(ckpt)
    windows = calibration_windows(calibration, runtime_tokenizer(ckpt), cfg.n_positions)
    ranges = kv_channel_ranges(cfg, params, windows)
    held = kv_channel_ranges(cfg, params, held_windows)
    out = {}
    for kv in "kv":
        out[kv + " spread"] = [float(r.max() / np.median(r)) for r in ranges[kv]]
        out[kv + " over"] = [float((h / r).max()) for h, r in zip(held[kv], ranges[kv])]
    return out


def score(bundle: Path, wins, mode: str, threads: int) -> tuple[float, np.ndarray]:
    """(perplexity, the predicted next token at every scored position) over the windows."""
    from liteship.runtime.generate import KVCacheSession

    session = KVCacheSession(bundle, threads=threads)
    total, count, choices = 0.0, 0, []
    for w in wins:
        session.reset()
        ids = w.astype(np.int32)
        if mode == "prefill":
            logits = session.prefill(ids)  # (n, V)
        else:
            logits = np.concatenate([session.prefill(ids[:1])] + [session.decode(int(t))[None] for t in ids[1:]])
        total += quality.nll_of_logits(logits, w)
        count += len(w) - 1
        choices.append(logits[:-1].argmax(1))
    return math.exp(total / count), np.concatenate(choices)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, required=True, help="checkpoints and bundles go here")
    ap.add_argument("--reuse", action="store_true", help="skip training: the checkpoint in --work-dir")
    ap.add_argument("--minutes", type=float, default=3.0, help="training time budget")
    ap.add_argument("--steps", type=int, help="train a fixed number of steps instead")
    ap.add_argument("--quick", action="store_true", help="quality_gpt2.py's tiny model (smoke test)")
    ap.add_argument("--quants", default="fp32,dynamic-int8")
    ap.add_argument("--modes", default="prefill,decode")
    ap.add_argument("--outlier-gain", type=float, default=20.0)
    ap.add_argument("--max-windows", type=int, help="score only the first N held-out windows")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpt2_kv_int8_accuracy.md")
    args = ap.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    from liteship.convert.gpt2 import kv_equalize
    from liteship.convert.gpt2.export import export

    setup = quality.SETUPS["quick" if args.quick else "full"]
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    ckpt, tok, train_docs, held_docs, stats = train_or_reuse(work, setup, args, log)
    calibration = work / "calibration.txt"
    calibration.write_text("\n".join(train_docs.values()))
    held = quality.token_stream(tok, held_docs.values(), tok.eos_token_id)
    wins = quality.windows(held, setup.context)[:args.max_windows]
    models = {"trained": ckpt,
              f"outliers x{args.outlier_gain:g}": outlier_checkpoint(ckpt, work / "outlier", args.outlier_gain)}
    modes = args.modes.split(",")
    lines = []
    for model_name, path in models.items():
        report = channel_report(path, calibration, wins)
        log(f"{model_name}: {report}")
        lines.append(f"- {model_name}, per layer: widest / median channel range on the calibration text, K "
                     f"{', '.join(f'{x:.1f}' for x in report['k spread'])}, V "
                     f"{', '.join(f'{x:.1f}' for x in report['v spread'])}; the held-out text's largest |value| "
                     f"over its channel's calibration range, K {', '.join(f'{x:.2f}' for x in report['k over'])}, "
                     f"V {', '.join(f'{x:.2f}' for x in report['v over'])}")
    rows = []
    for model_name, path in models.items():
        for quant in args.quants.split(","):
            results = {}
            for cache, (opts, headroom) in CACHES.items():
                out = work / f"bundle-{path.name}-{quant}-{cache.replace(' ', '-').replace(',', '')}"
                shutil.rmtree(out, ignore_errors=True)
                extra = dict(opts, kv_calibration=calibration) if opts else {}
                kv_equalize.HEADROOM = headroom or kv_equalize.HEADROOM
                export(path, out, quant=quant, max_context=setup.context, prefill_len=setup.context // 2, **extra)
                for mode in modes:
                    start = time.perf_counter()
                    results[cache, mode] = score(out, wins, mode, args.threads)
                    log(f"{model_name} {quant} {cache} {mode}: perplexity {results[cache, mode][0]:.4f} "
                        f"({time.perf_counter() - start:.0f} s)")
            for mode in modes:
                ref, ref_choice = results["float", mode]
                cells = []
                for cache in list(CACHES)[1:]:
                    ppl, choice = results[cache, mode]
                    cells.append(f"{ppl:.4f} ({(ppl / ref - 1) * 100:+.3f}%) | {(choice == ref_choice).mean() * 100:.2f}%")
                rows.append(f"| {model_name} | {quant} | {mode} | {ref:.4f} | {' | '.join(cells)} |")
    count = sum(len(w) - 1 for w in wins)
    text = "\n".join([
        "# GPT-2 int8 KV cache: accuracy with and without per-channel equalization",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {machine_summary()}; "
        f"load average (1 min) {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (2 cores, shared)",
        f"- command: `python benchmarks/kv_int8_gpt2.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- model: quality_gpt2.py's GPT-2 n_layer={setup.n_layer}, n_head={setup.n_head}, n_embd={setup.n_embd}, "
        f"context={setup.context}; {stats['steps']} training steps, final loss {stats['final_loss']}",
        f"- scored: {len(wins)} held-out windows of {setup.context}, {count} predicted tokens; calibration: the "
        "training documents (8192 tokens)",
        *lines,
        "",
        "| model | weights | scored through | perplexity, float32 cache | "
        + " | ".join(f"{c} | next token as float32" for c in list(CACHES)[1:]) + " |",
        "|---|---|---|---:|" + "---:|---:|" * (len(CACHES) - 1),
        *rows,
    ]) + "\n"
    print(text)
    write_atomic(args.out, text, mkdir=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
