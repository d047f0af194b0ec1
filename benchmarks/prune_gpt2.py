"""GPT-2 pruning, measured: train a small GPT-2 on Python's own docs (as quality_gpt2.py does), prune it with
`liteship prune gpt2` (the library call it runs), convert every variant to dynamic-int8 and compare held-out
perplexity, file and gzip size and decode speed side by side in one run.

    .venv/bin/python benchmarks/prune_gpt2.py             # ~25 min on 2 busy cores
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

from liteship.convert.prune import gzip_huffman_only, int8_weight_entropy  # noqa: E402
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
           "entropy": int8_weight_entropy(tflite), "gzip_huffman": len(gzip_huffman_only(tflite)),
           "decode_ms": 1000.0 / speed["decode_tok_s"], "prefill_tok_s": speed["prefill_tok_s"]}
    log(f"  {name}: perplexity {ppl:.3f}, {row['bytes']} bytes, gzip {row['gzip']}, decode {row['decode_ms']:.3f} ms")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--minutes", type=float, default=None,
                    help="train the base model for this long instead of --base-steps")
    ap.add_argument("--base-steps", type=int, default=None,
                    help="training steps of the base model (default 435, as in results/gpt2_quality.md; "
                         "quick 20)")
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps per variant (default 400, quick 10)")
    ap.add_argument("--learning-rate", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    setup = SETUPS["quick" if args.quick else "full"]
    base_steps = None if args.minutes else args.base_steps or (20 if args.quick else 435)
    steps = args.steps or (10 if args.quick else 400)

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
        log(f"training GPT-2 {setup.n_layer}x{setup.n_embd} for "
            f"{f'{base_steps} steps' if base_steps else f'{args.minutes} min'} ({len(train_stream)} tokens)")
        stats = train(model, train_stream, setup, seconds=(args.minutes or 0) * 60, steps=base_steps, seed=0,
                      log=log)
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
                "table_params": model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel(),
                "mlp_params": sum(p.numel() for block in model.transformer.h for p in block.mlp.parameters()),
                "train_tokens": len(train_stream), "vocab": config.vocab_size,
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
    ]
    lines += entropy_lines(rows["fine-tuned"], mag, "magnitude 50%")
    params, table, mlp = info["params"], info["table_params"], info["mlp_params"]
    kept_mlp = info["records"]["structured 50% MLP"]["n_inner"] / (4 * setup.n_embd)
    lines += [
        "",
        f"- parameter shares: token + position tables {table:,} of {params:,} ({table / params:.1%}; the token "
        f"table is also the LM head and stays whole), MLPs {mlp:,} ({mlp / params:.1%}). Removing "
        f"{1 - kept_mlp:.0%} of the MLP neurons leaves at best {(params - (1 - kept_mlp) * mlp) / params:.3f}x "
        f"the parameters: a 0.7x file from MLP neurons alone needs the MLPs to hold at least "
        f"{0.3 / (1 - kept_mlp):.0%} of the model, which a small model with its own vocabulary table does not",
        "- attention heads: not pruned. transformers 5's GPT2Attention fixes head_dim = n_embd / n_head for every "
        "layer and no longer reads `pruned_heads` from the config, so a GPT-2 folder cannot hold fewer heads of the "
        "same width; removing heads would need a model format of its own, which the issue rules out (the pruned "
        "model must stay a plain GPT-2 folder)",
        f"- decode work per token (multiply-accumulates of the block projections, the LM head and attention over "
        f"{setup.context} cached slots): {decode_macs(setup, 1.0, info['vocab']):,} before, "
        f"{decode_macs(setup, kept_mlp, info['vocab']):,} after "
        f"({decode_macs(setup, kept_mlp, info['vocab']) / decode_macs(setup, 1.0, info['vocab']):.3f}x): the "
        "floor the decode ratio can reach by halving the MLPs alone; the per-step costs that do not shrink "
        "(embedding lookup, layer norms, the cache update, the interpreter call) sit on top",
        f"- base training: {info['stats']['steps']} steps of {setup.batch} x {setup.context} tokens "
        f"({info['stats']['tokens_seen']:,} tokens seen, {info['stats']['tokens_seen'] / info['train_tokens']:.1f} "
        f"passes over the {info['train_tokens']:,} training tokens) in {info['stats']['seconds']:.0f} s, final loss "
        f"{info['stats']['final_loss']}",
    ]
    return "\n".join(lines) + "\n"


def decode_macs(setup, kept_mlp: float, vocab: int) -> int:
    """Multiply-accumulates of one decode step: per layer the attention projections (4 E^2), the MLP
    (8 E^2 x the kept fraction) and attention over T cached slots (2 T E); then the LM head (V E)."""
    e, t = setup.n_embd, setup.context
    return int(setup.n_layer * (4 * e * e + 8 * e * e * kept_mlp + 2 * t * e) + vocab * e)


def dense_names(tensors: dict, shown: int = 4) -> str:
    names = list(tensors)
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "") or "none"


def entropy_lines(dense: dict, pruned: dict, name: str) -> list[str]:
    """Why a gzip target is or is not reachable: the order-0 entropy of the int8 weights before and after."""
    d, p = dense["entropy"], pruned["entropy"]
    return [
        "",
        f"- {name}: the int8 weights ({p['weight_bytes']:,} bytes) are {p['zero_fraction']:.1%} zeros; their order-0 "
        f"entropy is {p['entropy_bits']:.2f} bits per weight ({d['entropy_bits']:.2f} unpruned; the non-zero "
        f"weights alone {p['nonzero_entropy_bits']:.2f}); {p['dense_bytes']:,} bytes of them are in tensors left "
        f"dense ({dense_names(p['dense_tensors'])}). A coder of single bytes at that entropy, with the rest "
        f"of the file gzip'd, reaches {p['bound_bytes'] / dense['gzip']:.3f}x the unpruned gzip "
        f"(gzip itself: {pruned['gzip'] / dense['gzip']:.3f}x; gzip with zlib's Huffman-only strategy, a .gz any "
        f"gunzip reads: {pruned['gzip_huffman'] / dense['gzip']:.3f}x the unpruned default gzip)",
    ]


if __name__ == "__main__":
    sys.exit(main())
