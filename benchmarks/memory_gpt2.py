"""Where a GPT-2 bundle's memory goes: RSS after each stage of loading and running it, in a fresh process per row.

    .venv/bin/python benchmarks/memory_gpt2.py benchmarks/out/dynamic-int8 benchmarks/out/fp32 [--threads 2]

Stages: imports (numpy + the interpreter package), the interpreter created (model file mapped), KVCacheSession
ready (allocate_tensors: XNNPACK packs the weights, arenas are planned), a prompt prefilled, decoded up to the
context. At each: VmRSS, VmHWM (peak) from /proc/self/status and anonymous vs file-backed resident memory from
/proc/self/smaps_rollup ("anon" counts private anonymous memory only: the KV cache's shared anonymous maps are
in "file"), and at the end the resident bytes per mapping. Rows: each bundle with XNNPACK on and off, at each
--contexts value. Used for the tables in docs/gpt2_kv_cache.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

MIB = 2**20


def proc_memory() -> dict:
    """VmRSS/VmHWM and anonymous/file resident bytes of this process (Linux /proc)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Anonymous", "Rss"):
                out["smaps_" + key] = int(rest.split()[0]) * 1024
    out["anon"] = out.pop("smaps_Anonymous")
    out["file"] = out.pop("smaps_Rss") - out["anon"]
    return out


CHILD = """
import json, sys, time
sys.path.insert(0, {here!r})
from memory_gpt2 import by_mapping, proc_memory
stages = []
def mark(name, **extra):
    stages.append(dict(stage=name, **proc_memory(), **extra))
import numpy as np
import liteship.runtime.interpreter as li
li.resolve_backend()
mark("imports")
from liteship.runtime import generate as g
real_create = li.create_interpreter
def create(*a, **k):
    k.setdefault("use_xnnpack", {xnnpack})
    interp = real_create(*a, **k)
    mark("interpreter created")
    return interp
li.create_interpreter = create
t = time.perf_counter()
s = g.KVCacheSession({bundle!r}, threads={threads}{session_kwargs})
mark("session ready", seconds=round(time.perf_counter() - t, 3))
rng = np.random.default_rng(0)
ids = rng.integers(0, s.vocab_size, {context} - {decode})
t = time.perf_counter()
for start in range(0, len(ids), s.prefill_len):  # a mark per prefill_len tokens (prefill() chunks them further)
    logits = s.prefill(ids[start:start + s.prefill_len], all_logits=False)[-1]
    mark("prefilled {{}} tokens ({{}} slots)".format(s.length, s.slots), seconds=round(time.perf_counter() - t, 3))
t = time.perf_counter()
for _ in range({decode}):
    logits = s.decode(int(np.argmax(logits)))
mark("decoded to {context}", seconds=round(time.perf_counter() - t, 3))
stages[-1]["mappings"] = by_mapping()
print("RESULT " + json.dumps(stages))
"""


def by_mapping(at_least: int = 2 * MIB) -> dict:
    """Resident bytes per mapped file ("[heap]", "[anon]" for anonymous memory, "/dev/zero" for shared anonymous
    maps such as the KV cache), largest first, those of at least ``at_least`` bytes (/proc/self/smaps)."""
    sizes, name = {}, "[anon]"
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                name = head[5] if len(head) > 5 else "[anon]"
            elif line.startswith("Rss:"):
                sizes[name] = sizes.get(name, 0) + int(head[1]) * 1024
    return {k: v for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]) if v >= at_least}


def measure(bundle: str, *, context: int, threads: int, xnnpack: bool, decode: int = 32,
            session_kwargs: str = "") -> list[dict]:
    import os
    code = CHILD.format(here=os.path.dirname(os.path.abspath(__file__)), bundle=bundle, threads=threads,
                        xnnpack=xnnpack, context=context, decode=decode, session_kwargs=session_kwargs)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"child failed ({proc.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--contexts", type=int, nargs="+", default=[128, 896])
    ap.add_argument("--no-xnnpack-too", action="store_true", help="also measure each with XNNPACK off")
    ap.add_argument("--session", default="", help="extra KVCacheSession keyword arguments, e.g. ', grow_cache=False'")
    args = ap.parse_args()
    print("| bundle | XNNPACK | context | stage | RSS MiB | peak MiB | anon MiB | file MiB | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for bundle in args.bundles:
        for xnnpack in (True, False) if args.no_xnnpack_too else (True,):
            for ctx in args.contexts:
                for st in measure(bundle, context=ctx, threads=args.threads, xnnpack=xnnpack,
                                  session_kwargs=args.session):
                    print(f"| {bundle.rstrip('/').split('/')[-1]} | {'on' if xnnpack else 'off'} | {ctx} | "
                          f"{st['stage']} | {st['VmRSS'] / MIB:.0f} | {st['VmHWM'] / MIB:.0f} | "
                          f"{st['anon'] / MIB:.0f} | {st['file'] / MIB:.0f} | {st.get('seconds', '')} |",
                          flush=True)
                    for name, size in st.get("mappings", {}).items():  # where the last stage's RSS is
                        print(f"|  |  |  | resident: {name} | {size / MIB:.0f} |  |  |  |  |")


if __name__ == "__main__":
    main()
