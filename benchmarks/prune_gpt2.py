"""GPT-2 pruning, measured: train a small GPT-2 on Python's own docs (as quality_gpt2.py does), prune it with
`liteship prune gpt2` (the library call it runs), convert every variant to dynamic-int8 and compare held-out
perplexity, file and gzip size and decode speed side by side in one run.

    .venv/bin/python benchmarks/prune_gpt2.py             # ~15 min on 2 busy cores
    .venv/bin/python benchmarks/prune_gpt2.py --quick     # a smoke run

Rows: the trained model; the same fine-tuned as many steps as the pruned ones without pruning (the
baseline the targets compare with); magnitude 50% of the block projections (targets: gzip <= 0.6x, perplexity
within 3%); structured 50% of the MLP neurons (targets: decode p50 <= 0.7x and file <= 0.7x, perplexity within
5%). Writes benchmarks/results/gpt2_prune.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from quality_gpt2 import SETUPS, perplexity_tflite, split_documents, token_stream, train, windows  # noqa: E402

from liteship.runtime.bench import machine_summary  # noqa: E402
from liteship.runtime.files import write_atomic  # noqa: E402

RESULTS = HERE / "results" / "gpt2_prune.md"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(name: str, folder: Path, out: Path, wins, context: int, threads: int) -> dict:
    from liteship.convert.gpt2.export import export
    from liteship.runtime.generation_bench import benchmark_generation

    bundle = export(folder, out / name.replace(" ", "-").replace("%", ""), quant="dynamic-int8",
                    max_context=context, prefill_len=context // 2).bundle
    tflite = (bundle / "model.tflite").read_bytes()
    ppl, _, _ = perplexity_tflite(bundle, wins, threads)
    speed = benchmark_generation(bundle, threads=threads, prompt_tokens=context // 2, new_tokens=32,
                                 context=context, repeats=5)
    row = {"name": name, "ppl": ppl, "bytes": len(tflite), "gzip": len(gzip.compress(tflite, 9, mtime=0)),
           "decode_ms": 1000.0 / speed["decode_tok_s"], "prefill_tok_s": speed["prefill_tok_s"]}
    log(f"  {name}: perplexity {ppl:.3f}, {row['bytes']} bytes, gzip {row['gzip']}, decode {row['decode_ms']:.3f} ms")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--minutes", type=float, default=None, help="training of the base model (default 3)")
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps per variant (default 200, quick 10)")
    ap.add_argument("--learning-rate", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    setup = SETUPS["quick" if args.quick else "full"]
    minutes = args.minutes if args.minutes is not None else setup.minutes if args.quick else 3.0
    steps = args.steps or (10 if args.quick else 200)

    import torch
    import transformers

    from liteship.convert import prune as P
    from liteship.convert.gpt2.prune import prune_gpt2
    from liteship.runtime.tokenizer import ByteLevelBPETokenizer
    from tests.gpt2_tokenizer_fixture import make_tokenizer_files

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="liteship-prune-gpt2-"))
    try:
        train_docs, held_docs = split_documents(0, 0.1)
        files = make_tokenizer_files(work / "tokenizer", vocab_size=setup.vocab_size, texts=train_docs.values())
        tok = ByteLevelBPETokenizer.from_tokenizer_json(files["tokenizer_json"])
        train_stream = token_stream(tok, train_docs.values(), tok.eos_token_id)
        wins = windows(token_stream(tok, held_docs.values(), tok.eos_token_id), setup.context)
        config = transformers.GPT2Config(
            n_layer=setup.n_layer, n_head=setup.n_head, n_embd=setup.n_embd, n_positions=setup.context,
            vocab_size=tok.vocab_size, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config)
        log(f"training GPT-2 {setup.n_layer}x{setup.n_embd} for {minutes} min")
        stats = train(model, train_stream, setup, seconds=minutes * 60, steps=None, seed=0, log=log)
        base = work / "trained"
        model.save_pretrained(base)
        transformers.GPT2TokenizerFast(tokenizer_file=str(files["tokenizer_json"])).save_pretrained(base)
        for role in ("vocab", "merges"):
            shutil.copy(files[role], base / files[role].name)
        text = work / "train.txt"
        text.write_text("\n\n".join(train_docs.values()), encoding="utf-8")

        def tuned(name, **options):
            opts = P.PruneOptions(**{"steps": steps, "learning_rate": args.learning_rate, "batch_size": 8,
                                     **options})
            log(f"{name}: {opts}")
            record = prune_gpt2(base, work / name, text, opts, context=setup.context, convert=False, progress=log)
            return work / name, record

        variants = {"fine-tuned": tuned("fine-tuned", method="none", sparsity=0.0),
                    "magnitude 50%": tuned("magnitude", method="magnitude", sparsity=0.5),
                    "structured 50% MLP": tuned("structured", method="structured", sparsity=0.5)}
        out = work / "bundles"
        rows = {"trained": measure("trained", base, out, wins, setup.context, args.threads)}
        for name, (folder, _) in variants.items():
            rows[name] = measure(name, folder, out, wins, setup.context, args.threads)
        info = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": machine_summary(), "setup": setup, "stats": stats, "steps": steps,
                "lr": args.learning_rate, "threads": args.threads, "windows": len(wins),
                "params": sum(p.numel() for p in model.parameters()),
                "records": {name: record for name, (_, record) in variants.items()}}
        table = markdown(rows, info)
        print(table)
        if not args.no_write:
            write_atomic(RESULTS, table, mkdir=True)
            log(f"wrote {RESULTS}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def markdown(rows: dict, info: dict) -> str:
    base = rows["fine-tuned"]
    setup = info["setup"]
    ok = lambda cond: "met" if cond else "NOT met"  # noqa: E731
    lines = [
        "# GPT-2 pruning: small GPT-2 on pydoc_data.topics, dynamic-int8, before and after in one run",
        "",
        f"- date: {info['date']}; machine: {info['machine']}. **The machine was shared with other jobs and busy: "
        "decode times are indicative**, sizes and perplexities are exact.",
        f"- base: GPT-2 n_layer={setup.n_layer}, n_embd={setup.n_embd}, context {setup.context} "
        f"({info['params']:,} parameters), trained {info['stats']['steps']} steps in PyTorch on the training "
        f"documents; every other row fine-tuned {info['steps']} more steps (Adam, lr {info['lr']}, batch 8, "
        "tf_keras) with `liteship prune gpt2`; 'fine-tuned' is that fine-tuning without pruning, the baseline",
        f"- every row dynamic-int8; perplexity over {info['windows']} held-out windows through the bundle's prefill; "
        f"decode ms = 1 / the best of 5 rounds' decode rate at {setup.context} slots, {info['threads']} thread(s)",
        "",
        "| model | perplexity | vs baseline | .tflite bytes | vs baseline | gzip bytes | vs baseline | decode ms "
        "| vs baseline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['ppl']:.3f} | {row['ppl'] / base['ppl'] - 1:+.2%} | {row['bytes']:,} | "
                     f"{row['bytes'] / base['bytes']:.3f} | {row['gzip']:,} | {row['gzip'] / base['gzip']:.3f} | "
                     f"{row['decode_ms']:.3f} | {row['decode_ms'] / base['decode_ms']:.3f} |")
    mag, st = rows["magnitude 50%"], rows["structured 50% MLP"]
    lines += [
        "",
        f"- magnitude 50%: gzip {mag['gzip'] / base['gzip']:.3f}x (target <= 0.6x: "
        f"{ok(mag['gzip'] <= 0.6 * base['gzip'])}), perplexity {mag['ppl'] / base['ppl'] - 1:+.2%} (target within "
        f"3%: {ok(mag['ppl'] <= 1.03 * base['ppl'])})",
        f"- structured 50% of MLP neurons (n_inner {info['records']['structured 50% MLP']['n_inner']}): decode "
        f"{st['decode_ms'] / base['decode_ms']:.3f}x (target <= 0.7x: {ok(st['decode_ms'] <= 0.7 * base['decode_ms'])}"
        f"), file {st['bytes'] / base['bytes']:.3f}x (target <= 0.7x: {ok(st['bytes'] <= 0.7 * base['bytes'])}), "
        f"perplexity {st['ppl'] / base['ppl'] - 1:+.2%} (target within 5%: {ok(st['ppl'] <= 1.05 * base['ppl'])})",
        "- the MLP holds 8 of a block's 12 n_embd^2 weights; halving it leaves 2/3 of the block weights, and the "
        "token table (also the LM head) is untouched, so a 0.7x file needs the table to be small against the blocks",
    ]
    if info["stats"]["steps"] < 100:
        lines.append(f"- **the base got only {info['stats']['steps']} training steps** in its time budget on the busy "
                     "machine; the 'fine-tuned' row (the same model after the fine-tuning every pruned row also got) "
                     "is the trained model the targets compare with. Rerun with more --minutes on a quieter machine.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
