"""GPT-2 speed, side by side in one run: transformers PyTorch fp32 (generate with its KV cache) vs liteship fp32,
fp16 and dynamic-int8 bundles. Builds GPT-2 124M with random weights locally (no download).

    .venv/bin/python benchmarks/bench_gpt2.py            # 124M, writes benchmarks/results/gpt2_speed.md
    .venv/bin/python benchmarks/bench_gpt2.py --quick    # tiny model, smoke test (seconds)
    .venv/bin/python benchmarks/bench_gpt2.py --memory-only --work benchmarks/out   # peak RSS and start-up only

Every conversion and every measurement runs in its own subprocess so that its peak RSS (ru_maxrss) is its own.
Decode at context c: the cache holds c - n tokens, then n greedy steps are timed. Timings are wall clock on a
shared machine; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from liteship.runtime.bench import machine_summary
from liteship.runtime.files import write_atomic

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
QUANTS = ("fp32", "fp16", "dynamic-int8", "int4", "dynamic-int8-kv8")
KV8 = "-kv8"  # a variant's suffix: the same quantization with `--kv-cache int8`, its scales from CALIBRATION_TEXT


def run_child(code: str, env: dict | None = None) -> dict:
    """Run python code in a fresh process; it prints one JSON line last, which also gets the child's peak RSS."""
    wrapped = code + textwrap.dedent("""
        import resource, json as _j
        RESULT["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print("RESULT " + _j.dumps(RESULT))
    """)
    proc = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True,
                          env=None if env is None else {**os.environ, **env})
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"child failed ({proc.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def make_checkpoint(folder: Path, quick: bool) -> None:
    run_child(f"""
import json, torch, transformers
from liteship.runtime.tokenizer import bytes_to_unicode
torch.manual_seed(0)
cfg = transformers.GPT2Config(**({{"n_layer": 2, "n_head": 2, "n_embd": 64, "vocab_size": 1000, "n_positions": 1024,
                                   "bos_token_id": 999, "eos_token_id": 999}} if {quick} else {{}}))
model = transformers.GPT2LMHeadModel(cfg).eval()
model.save_pretrained({str(folder)!r})
# A byte-level vocabulary is enough for speed: the benchmark feeds token ids. It has one merge because llama.cpp
# (the optional peer) refuses a BPE vocabulary without any.
b2u = bytes_to_unicode()
vocab = {{b2u[b]: i for i, b in enumerate(sorted(b2u))}}
vocab["\u0120t"] = len(vocab)
vocab["<|endoftext|>"] = cfg.eos_token_id
open({str(folder / "vocab.json")!r}, "w").write(json.dumps(vocab))
open({str(folder / "merges.txt")!r}, "w").write("#version: 0.2\\n\u0120 t\\n")
RESULT = {{"params": sum(p.numel() for p in model.parameters())}}
""")


def convert(ckpt: Path, out: Path, quant: str) -> dict:
    kv = ""
    if quant.endswith(KV8):
        # The int8 cache's per-layer scales come from text run through the model: Python's own help topics,
        # written beside the checkpoint (the benchmark's byte-level vocabulary tokenizes any text)
        text = ckpt.parent / "kv-calibration.txt"
        if not text.is_file():
            from pydoc_data.topics import topics
            write_atomic(text, "\n".join(topics[k] for k in sorted(topics))[:200_000])
        quant, kv = quant[:-len(KV8)], f", kv_cache='int8', kv_calibration={str(text)!r}"
    return run_child(f"""
from liteship.convert.gpt2.export import export
r = export({str(ckpt)!r}, {str(out)!r}, quant={quant!r}, max_context=1024, prefill_len=128{kv})
RESULT = {{"seconds": r.seconds, "size_bytes": r.tflite_bytes}}
""")


def bench_liteship(bundle: Path, threads: int, prompt: int, new: int, grow_cache: bool | None) -> dict:
    return run_child(f"""
from liteship.runtime.generation_bench import benchmark_generation
RESULT = benchmark_generation({str(bundle)!r}, threads={threads}, prompt_tokens={prompt}, new_tokens={new},
                              context=256, contexts=(128, 1024), grow_cache={grow_cache})
""")


def bench_whole_text(bundle: Path, threads: int, grow_cache: bool) -> dict:
    """Decode tok/s over a whole text, position 1 to max_context, every growth of the cache included."""
    return run_child(f"""
import time, numpy as np
from liteship.runtime.generate import KVCacheSession
s = KVCacheSession({str(bundle)!r}, threads={threads}, grow_cache={grow_cache})
logits = s.prefill([0])[-1]
s.decode(int(np.argmax(logits))); s.reset(); logits = s.prefill([0])[-1]  # warm-up
t = time.perf_counter()
while s.length < s.max_context:
    logits = s.decode(int(np.argmax(logits)))
RESULT = {{"tok_s": (s.max_context - 1) / (time.perf_counter() - t), "kv_cache": "grown" if s.grow_cache else "full"}}
""")


def bench_memory(bundle: Path, threads: int, context: int, engine: str, cache: Path) -> dict:
    """Peak RSS of a fresh process that starts a session, prefills context - 32 tokens and decodes 32 (the
    protocol used for llama.cpp: the whole context in the cache), and how long the session took to start.
    ``cache`` is LITESHIP_CACHE: empty for a first (cold) start, filled by it for later ones."""
    return run_child(f"""
import time, numpy as np
t = time.perf_counter()
from liteship.runtime.generate import KVCacheSession
s = KVCacheSession({str(bundle)!r}, threads={threads}, engine={engine!r})
init = time.perf_counter() - t
t = time.perf_counter()
logits = s.prefill(np.random.default_rng(0).integers(0, s.vocab_size, {context} - 32), all_logits=False)[-1]
prefill = time.perf_counter() - t
t = time.perf_counter()
for _ in range(32):
    logits = s.decode(int(np.argmax(logits)))
RESULT = {{"init_s": init, "prefill_tok_s": ({context} - 32) / prefill, "decode_tok_s": 32 / (time.perf_counter() - t),
          "engine": s.engine}}
""", env={"LITESHIP_CACHE": str(cache)})


LLAMA_CPP_QUANT = {"dynamic-int8": "q8_0", "int4": "q4_0", "fp32": "f32"}  # the llama.cpp type beside each variant
LLAMA_CPP_Q8_RSS = {128: 245 * 2**20, 896: 251 * 2**20}  # the 2026-12-02 peer run, when llama.cpp is not installed here


def llama_cpp_missing() -> str | None:
    """Why the llama.cpp peer cannot run here, or None. It needs llama-cpp-python (an optional benchmark
    dependency: pip install llama-cpp-python builds llama.cpp, ~9 minutes on 2 cores) and llama.cpp's
    convert_hf_to_gguf.py (in that package's sdist, vendor/llama.cpp/) named by $LLAMA_CPP_CONVERT."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install llama-cpp-python; builds llama.cpp, ~9 min)"
    script = os.environ.get("LLAMA_CPP_CONVERT")
    if not script or not Path(script).is_file():
        return "set LLAMA_CPP_CONVERT to llama.cpp's convert_hf_to_gguf.py (vendor/llama.cpp/ in the sdist)"
    if importlib.util.find_spec("gguf") is None:
        return "the converter needs the gguf package: pip install vendor/llama.cpp/gguf-py from the same sdist"
    return None


# Runs llama.cpp's converter with two adjustments for this benchmark's checkpoint: transformers no longer writes
# GPT-2's `n_ctx` (the converter reads it; it is n_positions), and the byte-level test vocabulary has no merges, so
# its pre-tokenizer hash is none llama.cpp knows: it is GPT-2's pre-tokenizer, so say "gpt-2".
GGUF_CONVERT = """
import json, os, runpy, sys
script, ckpt, hf = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(hf, exist_ok=True)
for name in os.listdir(ckpt):
    if name != "config.json" and not os.path.exists(os.path.join(hf, name)):
        os.symlink(os.path.abspath(os.path.join(ckpt, name)), os.path.join(hf, name))
config = json.load(open(os.path.join(ckpt, "config.json")))
config.setdefault("n_ctx", config["n_positions"])
json.dump(config, open(os.path.join(hf, "config.json"), "w"))
sys.path.insert(0, os.path.dirname(script))
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv = [script, hf] + sys.argv[4:]
runpy.run_path(script, run_name="__main__")
"""


# llama.cpp's own quantizer (llama_model_quantize, through llama-cpp-python) for the types its converter does
# not write: Q4_0 from the F32 file, all tensors Q4_0 but the output and token tables' defaults, as llama-quantize.
GGUF_QUANTIZE = """
import sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype, params.nthread = int(sys.argv[3]), int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params))
"""
LLAMA_FTYPES = {"q4_0": 2}  # llama_ftype LLAMA_FTYPE_MOSTLY_Q4_0 (llama.h)


def llama_cpp_convert(ckpt: Path, out: Path, outtype: str, threads: int = 2) -> Path:
    gguf = out / f"gpt2-{outtype}.gguf"
    if outtype in LLAMA_FTYPES and not gguf.is_file():
        source = llama_cpp_convert(ckpt, out, "f32")
        proc = subprocess.run([sys.executable, "-c", GGUF_QUANTIZE, str(source), str(gguf) + ".partial",
                               str(LLAMA_FTYPES[outtype]), str(threads)], capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"llama.cpp's quantizer failed ({proc.returncode})")
        os.replace(str(gguf) + ".partial", gguf)
    if not gguf.is_file():
        out.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-c", GGUF_CONVERT, os.environ["LLAMA_CPP_CONVERT"], str(ckpt),
                               str(out / "hf"), "--outtype", outtype, "--outfile", str(gguf)],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"llama.cpp's converter failed ({proc.returncode})")
    return gguf


def bench_llama_cpp(gguf: Path, threads: int, context: int) -> dict:
    """The same protocol as bench_memory, through llama-cpp-python: context - 32 tokens evaluated at once, then
    32 greedy steps; the context window is the whole bundle's (1024), as liteship's max_context."""
    return run_child(f"""
import time, numpy as np
t = time.perf_counter()
from llama_cpp import Llama
m = Llama(model_path={str(gguf)!r}, n_ctx=1024, n_threads={threads}, n_batch=128, verbose=False)
init = time.perf_counter() - t
ids = [int(i) for i in np.random.default_rng(0).integers(0, m.n_vocab(), {context} - 32)]
t = time.perf_counter()
m.eval(ids)
prefill = time.perf_counter() - t
t = time.perf_counter()
for _ in range(32):
    m.eval([m.sample(top_k=1, temp=0.0)])  # greedy (scores are kept only with logits_all, which costs memory)
RESULT = {{"init_s": init, "prefill_tok_s": len(ids) / prefill, "decode_tok_s": 32 / (time.perf_counter() - t)}}
""")


def bench_llama_cpp_speed(gguf: Path, threads: int, prompt: int, new: int, contexts: tuple) -> dict:
    """liteship's speed protocol through llama-cpp-python: prefill ``prompt`` random tokens from an empty cache;
    decode at context c = ``new`` greedy steps timed after c - new tokens are in the cache (evaluated, untimed);
    each rate the best of 3 rounds, the contexts taking turns. n_ctx 1024, as the bundles' max_context."""
    return run_child(f"""
import time, numpy as np
from llama_cpp import Llama
m = Llama(model_path={str(gguf)!r}, n_ctx=1024, n_threads={threads}, n_threads_batch={threads}, n_batch=128,
          verbose=False)
rng = np.random.default_rng(0)
ids = lambda n: [int(i) for i in rng.integers(0, m.n_vocab(), n)]
m.eval(ids(16)); m.reset()  # warm-up
prefill, rates = 0.0, {{c: 0.0 for c in {tuple(contexts)!r}}}
for _ in range(3):
    x = ids({prompt}); m.reset()
    t = time.perf_counter(); m.eval(x); prefill = max(prefill, {prompt} / (time.perf_counter() - t))
    for c in rates:
        m.reset(); m.eval(ids(c - {new}))
        token = m.sample(top_k=1, temp=0.0)
        t = time.perf_counter()
        for _ in range({new}):
            m.eval([token])
            token = m.sample(top_k=1, temp=0.0)
        rates[c] = max(rates[c], {new} / (time.perf_counter() - t))
RESULT = {{"prefill_tok_s": prefill, "decode_tok_s_by_context": {{str(c): r for c, r in rates.items()}}}}
""")


def measure_memory(work: Path, args) -> list[tuple]:
    """Rows (name, init cold s, init warm s, {context: (peak RSS bytes, decode tok/s, prefill tok/s)}) for each
    liteship variant and engine, and llama.cpp beside them when it is installed."""
    rows = []
    for q in args.quants:
        if not (work / q / "manifest.json").is_file():
            continue
        for engine in ("compiled", "interpreter"):
            cache = work / f"liteship-cache-{q}-{engine}"
            shutil.rmtree(cache, ignore_errors=True)
            first = bench_memory(work / q, args.threads, 128, engine, cache)  # cold: builds any weight cache
            if first["engine"] != engine:
                continue
            by_ctx = {}
            for ctx in (128, 896):
                r = bench_memory(work / q, args.threads, ctx, engine, cache)
                by_ctx[ctx] = (r["peak_rss_bytes"], r["decode_tok_s"], r["prefill_tok_s"], r["init_s"])
            rows.append((f"liteship {q}, {engine} engine", first["init_s"], by_ctx[128][3],
                         {c: v[:3] for c, v in by_ctx.items()}))
    why = llama_cpp_missing()
    if why:
        print(f"llama.cpp peer skipped: {why}", file=sys.stderr)
        rows.append((f"llama.cpp: skipped ({why})", None, None, {}))
        return rows
    for q, outtype in LLAMA_CPP_QUANT.items():
        if q not in args.quants:
            continue
        gguf = llama_cpp_convert(work / "checkpoint", work / "gguf", outtype)
        by_ctx = {ctx: bench_llama_cpp(gguf, args.threads, ctx) for ctx in (128, 896)}
        rows.append((f"llama.cpp {outtype.upper()} (beside {q})", by_ctx[128]["init_s"], None,
                     {c: (r["peak_rss_bytes"], r["decode_tok_s"], r["prefill_tok_s"]) for c, r in by_ctx.items()}))
    return rows


def memory_lines(rows: list[tuple]) -> list[str]:
    mib = lambda b: f"{b / 2**20:.0f}"
    lines = ["", "### Memory and start-up", "",
             "Fresh process per cell: start a session, prefill context - 32 random tokens (prefill tok/s: that "
             "one call), decode 32 greedy (decode tok/s of those 32 steps; one run, not best of rounds). Start-up: "
             "session creation with imports; cold = first start with an empty LITESHIP_CACHE (the compiled engine "
             "writes its XNNPACK weight cache), warm = later starts.", "",
             "| runtime | start-up cold s | start-up warm s | peak RSS MiB @128 | peak RSS MiB @896 "
             "| prefill tok/s @128 | prefill tok/s @896 | decode tok/s @128 | decode tok/s @896 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, cold, warm, by_ctx in rows:
        if not by_ctx:
            lines.append(f"| {name} |" + " - |" * 8)
            continue
        f = lambda v: "-" if v is None else f"{v:.2f}"
        lines.append(f"| {name} | {f(cold)} | {f(warm)} | {mib(by_ctx[128][0])} | {mib(by_ctx[896][0])} "
                     f"| {by_ctx[128][2]:.0f} | {by_ctx[896][2]:.0f} | {by_ctx[128][1]:.1f} | {by_ctx[896][1]:.1f} |")
    lines.append("")
    for q, outtype in (("dynamic-int8", "q8_0"), ("dynamic-int8" + KV8, "q8_0"), ("int4", "q4_0")):
        ours = next((c for n, _, _, c in rows if n.startswith(f"liteship {q}, compiled")), None)
        peer = next((c for n, _, _, c in rows if n.startswith(f"llama.cpp {outtype.upper()}") and c), None)
        if outtype == "q8_0" and not peer:
            peer = {c: (rss,) for c, rss in LLAMA_CPP_Q8_RSS.items()}
        if not ours or not peer:
            continue
        source = "measured in this run" if len(peer[128]) > 1 else \
            "llama-cpp-python 0.3.36, measured earlier on this machine"
        for ctx in (128, 896):
            ok = ours[ctx][0] <= peer[ctx][0]
            verdict = f"target <= llama.cpp: {'met' if ok else 'NOT met'}" if outtype == "q8_0" else \
                ("below" if ok else "above")
            lines.append(f"- {q} (compiled engine) peak RSS @{ctx}: {mib(ours[ctx][0])} MiB vs llama.cpp "
                         f"{outtype.upper()} {mib(peer[ctx][0])} MiB ({source}): {verdict}")
    return lines


def bench_torch(ckpt: Path, threads: int, prompt: int, new: int) -> dict:
    return run_child(f"""
import time, torch, transformers
torch.set_num_threads({threads})
model = transformers.GPT2LMHeadModel.from_pretrained({str(ckpt)!r}).eval()
V = model.config.vocab_size
g = torch.Generator().manual_seed(0)
def ids(n): return torch.randint(0, V, (1, n), generator=g)
def gen(x, n):
    t = time.perf_counter()
    with torch.no_grad():
        model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return time.perf_counter() - t
with torch.no_grad():
    model(ids(16))  # warm-up
    x = ids({prompt}); t = time.perf_counter(); model(x); prefill = time.perf_counter() - t
RESULT = {{"prefill_tok_s": {prompt} / prefill, "decode_tok_s_by_context": {{}}}}
rates = {{128: 0.0, 256: 0.0, 1024: 0.0}}
for _ in range(3):  # best of 3 rounds, contexts taking turns: the same treatment liteship's rates get
    for ctx in rates:
        x = ids(ctx - {new})
        gen(x, 2)
        full, one = gen(x, {new}), gen(x, 1)  # generate(n) - generate(1) = n - 1 decode steps with the KV cache
        rates[ctx] = max(rates[ctx], ({new} - 1) / (full - one))
RESULT["decode_tok_s_by_context"] = {{str(c): r for c, r in rates.items()}}
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny model instead of 124M (smoke test)")
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpt2_speed.md")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint and bundles (printed path)")
    ap.add_argument("--work", type=Path, help="use (and keep) this folder; a checkpoint or bundle already in it "
                                              "is reused, not rebuilt")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the memory and start-up table, over the bundles already in --work")
    ap.add_argument("--quants", default=",".join(QUANTS),
                    help=f"the liteship variants (and the llama.cpp types beside them) to measure, comma-separated "
                         f"(default: {','.join(QUANTS)}); e.g. dynamic-int8,int4 for the memory targets alone")
    ap.add_argument("--peer-threads", help="thread counts PyTorch and llama.cpp run at, comma-separated (default: "
                                           "1 and --threads; the verdicts use each peer's better one)")
    args = ap.parse_args()
    args.quants = [q for q in args.quants.split(",") if q]
    unknown = sorted(set(args.quants) - set(QUANTS))
    if unknown:
        ap.error(f"--quants: unknown {', '.join(unknown)} (choose from {', '.join(QUANTS)})")
    if "fp32" not in args.quants and not args.memory_only:
        ap.error("--quants: the speed table compares every variant with fp32; include it (or use --memory-only)")
    args.peer_threads = sorted({int(n) for n in args.peer_threads.split(",")} if args.peer_threads
                               else {1, args.threads})

    args.load = [os.getloadavg()[0]]  # the machine's load at the start and the end, written beside the figures
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-gpt2-"))
    print(f"working in {work}", file=sys.stderr)
    try:
        rows = [] if args.memory_only else measure(work, args)
        memory = measure_memory(work, args)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    args.load.append(os.getloadavg()[0])
    write_table(rows, memory, args)


def load_note(args) -> str:
    start, end = args.load
    state = ("nothing else ran at the start (the end's figure is mostly this benchmark's own threads)" if start < 1
             else "the machine is shared and busy")
    return (f" Load average (1 min) {start:.1f} at the start and {end:.1f} at the end, on {os.cpu_count()} cores: "
            f"{state}; peak RSS does not depend on load, the tok/s and seconds do (compare rows of one run, not "
            "runs).")


def measure(work: Path, args) -> list:
    ckpt = work / "checkpoint"
    if not (ckpt / "config.json").is_file():
        make_checkpoint(ckpt, args.quick)
    rows = []
    # PyTorch at 1 thread and at --threads: its OpenMP pool collapses when other processes share the cores (1 tok/s
    # at 2 threads vs 22 at 1 on this shared machine), so the ratio uses the better of the two.
    for n in args.peer_threads:
        t = bench_torch(ckpt, n, args.prompt_tokens, args.new_tokens)
        rows.append((f"PyTorch fp32, transformers generate, {n} thread{'s' * (n > 1)}", t, None,
                     sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))))
    for q in args.quants:
        if (work / q / "manifest.json").is_file():  # reused from --work: what its manifest recorded
            from liteship.runtime.bundle import Bundle
            b = Bundle.open(work / q)
            c = {"seconds": b.manifest["conversion"]["seconds"], "size_bytes": b.model_path.stat().st_size,
                 "peak_rss_bytes": b.manifest["conversion"]["peak_rss_bytes"]}
        else:
            print(f"converting {q} ...", file=sys.stderr)
            c = convert(ckpt, work / q, q)
        # The runtime's default (the cache grows with the text, except for fp16: see KVCacheSession) and, where
        # that differs, the same bundle attending over all 1024 slots from the first token (--full-cache)
        r = bench_liteship(work / q, args.threads, args.prompt_tokens, args.new_tokens, grow_cache=None)
        grows = r["kv_cache"].startswith("grows")
        rows.append((f"liteship {q}" + ("" if grows else ", full cache"), r, c, c["size_bytes"]))
        if grows:
            r = bench_liteship(work / q, args.threads, args.prompt_tokens, args.new_tokens, grow_cache=False)
            rows.append((f"liteship {q}, full cache", r, None, c["size_bytes"]))
    rows += measure_llama_cpp(work, args, rows)
    whole = [bench_whole_text(work / "dynamic-int8", args.threads, g) for g in (True, False)]
    rows.append(("whole text", whole, None, 0))
    return rows


def best_of(a: dict, b: dict) -> dict:
    """Two speed results of the same model, each rate the better of the two."""
    out = dict(a, prefill_tok_s=max(a["prefill_tok_s"], b["prefill_tok_s"]))
    out["decode_tok_s_by_context"] = {c: max(r, b["decode_tok_s_by_context"][c])
                                      for c, r in a["decode_tok_s_by_context"].items()}
    return out


def measure_llama_cpp(work: Path, args, rows: list) -> list:
    """llama.cpp beside each liteship variant (LLAMA_CPP_QUANT), at 1 thread and at --threads: under load from
    other processes its spinning thread pool collapses at 2 threads (as PyTorch's does), so the verdict uses the
    better. The pair the target compares (dynamic-int8, Q8_0) is measured twice, alternating with liteship, so
    that a burst of load on this shared machine hits both rather than one."""
    why = llama_cpp_missing()
    if why:
        print(f"llama.cpp peer skipped: {why}", file=sys.stderr)
        return [(f"llama.cpp: skipped ({why})", None, None, 0)]
    by_name = {name: i for i, (name, *_) in enumerate(rows)}
    out = []
    for q, outtype in LLAMA_CPP_QUANT.items():
        if f"liteship {q}" not in by_name or q not in args.quants:
            continue
        gguf = llama_cpp_convert(work / "checkpoint", work / "gguf", outtype, args.threads)
        for n in args.peer_threads:
            print(f"llama.cpp {outtype} at {n} thread(s) ...", file=sys.stderr)
            r = bench_llama_cpp_speed(gguf, n, args.prompt_tokens, args.new_tokens, (128, 256, 1024))
            if q == "dynamic-int8":  # liteship again, then llama.cpp again: each keeps its better rates
                i = by_name[f"liteship {q}"]
                again = bench_liteship(work / q, args.threads, args.prompt_tokens, args.new_tokens, None)
                rows[i] = (rows[i][0], best_of(rows[i][1], again), *rows[i][2:])
                r = best_of(r, bench_llama_cpp_speed(gguf, n, args.prompt_tokens, args.new_tokens, (128, 256, 1024)))
            out.append((f"llama.cpp {outtype.upper()} (beside {q}), {n} thread{'s' * (n > 1)}", r, None,
                        gguf.stat().st_size))
    return out


def target_lines(rows: list, base: float, fp32_size: int) -> list[str]:
    """The targets, as ratios within this run."""
    by_name = {name: (r, c, size) for name, r, c, size in rows}
    grown, full_whole = by_name.pop("whole text")[0]
    verdict = lambda ok: "met" if ok else "NOT met"
    int8, _, int8_size = by_name["liteship dynamic-int8"]
    full = by_name["liteship dynamic-int8, full cache"][0]["decode_tok_s_by_context"]
    fp16_size = next((size for name, (_, _, size) in by_name.items() if name.startswith("liteship fp16")), None)
    fp16 = ("not measured (--quants)" if fp16_size is None else
            f"{fp16_size / fp32_size:.3f} (target <= 0.51: {verdict(fp16_size / fp32_size <= 0.51)})")
    d = int8["decode_tok_s_by_context"]
    peak = max(c["peak_rss_bytes"] for _, c, _ in by_name.values() if c)
    return [
        f"- dynamic-int8 decode @256 / best PyTorch fp32 @256 = {d['256'] / base:.2f}x (target >= 4x: "
        f"{verdict(d['256'] / base >= 4)}); with the full cache {full['256'] / base:.2f}x",
        f"- dynamic-int8 decode @1024 / @256 = {d['1024'] / d['256']:.2f} (target >= 0.8: "
        f"{verdict(d['1024'] / d['256'] >= 0.8)}); with the full cache {full['1024'] / full['256']:.2f} "
        f"({verdict(full['1024'] / full['256'] >= 0.8)}), but at {full['256'] / base:.2f}x PyTorch",
        f"- dynamic-int8 decode over a whole text, position 1 to 1024, every growth of the cache included: "
        f"{grown['tok_s']:.1f} tok/s grown, {full_whole['tok_s']:.1f} tok/s with the full cache",
        f"- file vs fp32: dynamic-int8 {int8_size / fp32_size:.3f} (target <= 0.27: {verdict(int8_size / fp32_size <= 0.27)}),"
        f" fp16 {fp16}",
        *int4_lines(by_name, int8, fp32_size, verdict),
        f"- conversion peak RSS, worst variant: {peak / 1e9:.2f} GB = {peak / 2**30:.2f} GiB (target <= 4 GB: "
        f"{verdict(peak <= 4e9)})",
        "- rows without 'full cache': the runtime's default, decode's cache grown with the text (128 slots at a "
        "time); full cache: all 1024 slots from the first token (`--full-cache`, and the default for fp16 bundles, "
        "whose every growth re-unpacks their weights)",
    ]


def peer_lines(rows: list) -> list[str]:
    """Each liteship variant against the llama.cpp type beside it (the better of its thread counts); the issue's
    target: dynamic-int8 decode at 1024 >= 2x llama.cpp Q8_0's."""
    by_name = {name: r for name, r, _, _ in rows if r is not None}
    lines = []
    for q, outtype in LLAMA_CPP_QUANT.items():
        ours = by_name.get(f"liteship {q}")
        peers = [r for name, r in by_name.items() if name.startswith(f"llama.cpp {outtype.upper()} (beside {q})")]
        if not ours or not peers:
            continue
        peer = {c: max(p["decode_tok_s_by_context"][c] for p in peers) for c in ("128", "1024")}
        prefill = max(p["prefill_tok_s"] for p in peers)
        d = ours["decode_tok_s_by_context"]
        ratio = d["1024"] / peer["1024"]
        verdict = f" (target >= 2x: {'met' if ratio >= 2 else 'NOT met'})" if q == "dynamic-int8" else ""
        lines.append(f"- liteship {q} / llama.cpp {outtype.upper()} (its better thread count): decode @1024 "
                     f"{ratio:.2f}x{verdict}, @128 {d['128'] / peer['128']:.2f}x, prefill "
                     f"{ours['prefill_tok_s'] / prefill:.2f}x")
        if q == "dynamic-int8" and ratio < 2:
            # A decode step at 1024 slots costs at least one at 128 (the same weights read, more cache): how far
            # the target is from what the weights alone allow
            lines.append(f"  - the target needs a step at 1024 slots of {1e3 / (2 * peer['1024']):.2f} ms; liteship's "
                         f"step at 128 slots, nearly all of it the weights, already takes {1e3 / d['128']:.2f} ms")
    return lines


def int4_lines(by_name: dict, int8: dict, fp32_size: int, verdict) -> list[str]:
    """The int4 targets: file <= 0.16x fp32 and decode no slower than dynamic-int8 (quality: quality_gpt2.py)."""
    if "liteship int4" not in by_name:
        return []
    int4, _, int4_size = by_name["liteship int4"]
    d4, d8 = int4["decode_tok_s_by_context"], int8["decode_tok_s_by_context"]
    return [
        f"- int4 file vs fp32: {int4_size / fp32_size:.3f} (target <= 0.16: {verdict(int4_size / fp32_size <= 0.16)})",
        "- int4 decode / dynamic-int8 decode: " + ", ".join(
            f"@{c} {d4[c] / d8[c]:.2f}x ({verdict(d4[c] >= d8[c])})" for c in sorted(d8, key=int) if c in d4)
        + " (target >= 1x)",
    ]


def write_table(rows: list, memory: list, args) -> None:
    if not rows:  # --memory-only: its own results file
        table = "\n".join([f"# GPT-2 {'tiny (--quick)' if args.quick else '124M'} memory and start-up", "",
                           f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} on {machine_summary()}; "
                           f"threads={args.threads}; bundles built with max_context=1024, prefill_len=128; "
                           f"command: `python benchmarks/bench_gpt2.py {' '.join(sys.argv[1:])}`."
                           + load_note(args), *memory_lines(memory)]) + "\n"
        print(table)
        out = args.out.with_name("gpt2_memory.md")
        write_atomic(out, table, mkdir=True)
        print(f"wrote {out}", file=sys.stderr)
        return
    table_rows = [row for row in rows if row[0] != "whole text"]
    base = max(r["decode_tok_s_by_context"]["256"] for name, r, _, _ in table_rows if name.startswith("PyTorch"))
    fp32_size = next(size for name, _, _, size in table_rows if name == "liteship fp32")
    mb = lambda b: f"{b / 1e6:.0f}" if b >= 1e7 else f"{b / 1e6:.2f}"
    lines = [
        f"# GPT-2 {'tiny (--quick)' if args.quick else '124M'} speed",
        "",
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} on {machine_summary()}; threads={args.threads}; "
        f"prefill {args.prompt_tokens} tokens; decode {args.new_tokens} tokens ending at the context, best of 3 "
        "rounds for every model; "
        "liteship bundles built with max_context=1024, prefill_len=128; command: "
        f"`python benchmarks/bench_gpt2.py {' '.join(sys.argv[1:])}`." + load_note(args),
        "",
        "| model | prefill tok/s | decode tok/s @128 | decode tok/s @256 | decode tok/s @1024 | @1024 / @256 "
        "| decode vs best PyTorch @256 "
        "| file MB | file vs fp32 | convert s | convert peak RSS MB | runtime peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r, c, size in table_rows:
        if r is None:  # a peer that could not run here, and why
            lines.append(f"| {name} |" + " - |" * 11)
            continue
        d = r["decode_tok_s_by_context"]
        conv_s, conv_rss = ("-", "-") if c is None else (f"{c['seconds']:.1f}", mb(c["peak_rss_bytes"]))
        lines.append(
            f"| {name} | {r['prefill_tok_s']:.1f} | {d['128']:.1f} | {d['256']:.1f} | {d['1024']:.1f} "
            f"| {d['1024'] / d['256']:.2f} "
            f"| {d['256'] / base:.2f}x | {mb(size)} | {size / fp32_size:.3f} | "
            f"{conv_s} | {conv_rss} | {mb(r['peak_rss_bytes'])} |")
    if any(q.endswith(KV8) for q in args.quants):
        lines.append(f"- *{KV8}: the same conversion with `--kv-cache int8`, its scales from the first 200k characters of "
                     "Python's pydoc_data.topics (`--kv-calibration`)*")
    lines += ["", *target_lines(rows, base, fp32_size), *peer_lines(table_rows), *memory_lines(memory)]
    table = "\n".join(lines) + "\n"
    print(table)
    write_atomic(args.out, table, mkdir=True)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
