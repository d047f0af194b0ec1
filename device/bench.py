"""Benchmark a bundle on one or more targets at once and bring the figures back (``liteship.device-bench/1``).

Per target, in its own thread: open it, probe it, pick the runner, run it under ``android_bench/run_bench.sh``
(pins to the big cores, waits to cool down, records thermal and CPU frequency before and after, samples VmHWM,
writes one result file), read the results back. A failure on one target becomes that target's ``error``; the
others carry on.

Runners:

- ``python``: liteship's own ``liteship.runtime.bench`` with the device's python3. Remote targets get the bundle
  pushed (push.py) and the runtime as a zipapp (runtime_pack.py), both cached by hash; the local target runs the
  host's interpreter on the bundle where it is. GPT-2 bundles add a ``generation`` block (prefill/decode tok/s).
- ``benchmark_model``: the official TFLite/LiteRT binary the user gives (``--benchmark-binary``), pushed once and
  cached by hash, its log parsed by device/benchmark_model.py.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from liteship.errors import DeviceError, LiteshipError
from liteship.runtime.bench import utc_timestamp
from liteship.runtime.bundle import MODEL_NAME, cache_root
from liteship.runtime.files import sha256_file

from .base import Target, device_python, join, last_line, open_target, quote
from .benchmark_model import DELEGATE_FLAGS, MIB
from .probe import probe
from .push import load_local_bundle, push_bundle
from .run_bench import parse_run_bench_result, run_bench_argv, run_bench_script
from .runtime_pack import CachedFile, ensure_files_on_device, runtime_file

SCHEMA = "liteship.device-bench/1"
CORES = ("all", "big", "fastest")


@dataclass(frozen=True)
class BenchSettings:
    runs: int = 50
    warmup: int = 5
    threads: int | None = None
    cores: str = "all"                       # all | big | fastest (see android_bench/run_bench.sh)
    cool_below_c: int | None = None          # wait for every thermal zone to read below this before running
    benchmark_binary: str | None = None      # host path of benchmark_model for the device's ABI -> that runner
    python: str | None = None                # the devices' interpreter unless a spec sets ?python= (default:
                                             # python3; the host's for local); see base.device_python
    signature: str | None = None
    backend: str = "auto"                    # python runner: which interpreter package (see runtime.interpreter)
    delegate: str | None = None              # python runner: passed on; benchmark_model: one of its --use_* flags
    benchmark_args: tuple[str, ...] = ()     # benchmark_model: the user's own --name=value flags, passed through
    op_profiling: bool = False               # benchmark_model: --enable_op_profiling, top op types in the result
    contexts: tuple[int, ...] = (128, 512, 1024)  # benchmark_model on GPT-2: decode timed at these cache sizes
    workdir: str | None = None               # default: the target's own default_workdir()
    timeout_s: float = 1800.0                # for the benchmark command itself (plus duration_s)
    duration_s: float | None = None          # python runner: also run back to back this long (runtime/sustained.py)

    def __post_init__(self) -> None:
        if self.runs < 1 or self.warmup < 0:
            raise DeviceError("--runs must be >= 1 and --warmup >= 0")
        if self.cores not in CORES:
            raise DeviceError(f"--cores must be one of {', '.join(CORES)}, not {self.cores!r}")
        if self.threads is not None and self.threads < 1:
            raise DeviceError("--threads must be >= 1")
        if self.benchmark_binary and not Path(self.benchmark_binary).is_file():
            raise DeviceError(f"--benchmark-binary {self.benchmark_binary}: no such file")
        if self.benchmark_binary and self.delegate and self.delegate not in DELEGATE_FLAGS:
            raise DeviceError(f"benchmark_model knows the delegates {', '.join(DELEGATE_FLAGS)}, "
                              f"not {self.delegate!r}")
        if self.benchmark_binary and self.duration_s:
            raise DeviceError("--duration needs liteship's Python runner; benchmark_model has no sustained mode")
        if self.benchmark_binary and self.backend != "auto":
            raise DeviceError("--backend chooses liteship's Python interpreter; it does not apply to benchmark_model")
        if (self.benchmark_args or self.op_profiling) and not self.benchmark_binary:
            raise DeviceError("--benchmark-arg and --op-profiling apply to benchmark_model: add --benchmark-binary")
        if self.benchmark_binary:
            from .benchmark_model import check_benchmark_model_flag

            for arg in self.benchmark_args:
                check_benchmark_model_flag(arg)

    @property
    def runner(self) -> str:
        return "benchmark_model" if self.benchmark_binary else "python"


def _host_cache() -> Path:
    return cache_root() / "runtime-pack"


@dataclass(frozen=True)
class _RunFiles:
    """The files one run leaves on the device: run_bench.sh's result, the runner's JSON, the command's output."""

    folder: str
    run_id: str

    @property
    def result(self) -> str:
        return f"{self.folder}/{self.run_id}.result"

    @property
    def json(self) -> str:
        return f"{self.folder}/{self.run_id}.json"

    @property
    def output(self) -> str:
        return f"{self.folder}/{self.run_id}.out"

    def collect(self, target: Target) -> list[str]:
        """[result, json, output] read and deleted in one round trip (only the output's last 256 KiB)."""
        marker = f"--liteship-{secrets.token_hex(8)}--"
        script = (f"cat {quote(self.result)} 2>/dev/null; echo; echo {marker}\n"
                  f"cat {quote(self.json)} 2>/dev/null; echo; echo {marker}\n"
                  f"tail -c 262144 {quote(self.output)} 2>/dev/null; echo; echo {marker}\n"
                  f"rm -f {quote(self.result)} {quote(self.json)} {quote(self.output)}\n")
        parts = target.shell(script, timeout=120, check=False).stdout.split(f"\n{marker}\n")
        return [(parts[i] if i < len(parts) else "").strip("\n") for i in range(3)]

    def remove(self, target: Target) -> None:
        try:
            target.run(["rm", "-f", self.result, self.json, self.output], timeout=60, check=False)
        except Exception:  # best effort: the connection may be what failed
            pass


class _Run:
    """One benchmark on one target; every step notes progress, any LiteshipError ends it as the entry's error."""

    def __init__(self, bundle: Path, spec: str, settings: BenchSettings, options: dict, say: Callable[[str], None]):
        self.bundle, self.spec, self.settings, self.options, self.say = bundle, spec, settings, options, say
        self.entry: dict[str, Any] = {"target": spec, "kind": None, "ok": False, "runner": settings.runner,
                                      "device": None, "push": None, "run": None, "bench": None, "error": None}

    def __call__(self) -> dict:
        started = time.monotonic()
        try:
            with open_target(self.spec, **self.options) as target:
                self.entry["kind"] = target.kind
                self._bench(target)
                self.entry["ok"] = True
        except LiteshipError as exc:
            self.entry["error"] = str(exc)
        except Exception as exc:  # a bug on one target must not lose the others' results
            self.entry["error"] = f"{self.spec}: internal error {type(exc).__name__}: {exc}"
        self.entry["seconds"] = round(time.monotonic() - started, 3)
        self.say(f"{self.spec}: {'done' if self.entry['ok'] else 'FAILED: ' + str(self.entry['error'])}")
        return self.entry

    def _bench(self, target: Target) -> None:
        """probe -> place the bundle -> place the runner -> run it under run_bench.sh -> read the results."""
        s = self.settings
        local = target.kind == "local"
        workdir = (s.workdir or target.default_workdir()).rstrip("/")
        python = device_python(target, s.python)

        self.say(f"{self.spec}: probing")
        self.entry["device"] = facts = probe(target, workdir=workdir, python=python)
        if s.runner == "python":
            self._check_python(facts, python)
            self._check_runtime_version(facts)

        model = self._place_bundle(target, workdir, local)
        script, tool = self._place_runner(target, workdir, local)
        phases = self._gpt2_phases() if s.runner == "benchmark_model" else []
        if phases:
            bench = self._benchmark_gpt2(target, script, workdir, tool, model, phases)
        else:
            files = self._files(workdir)
            if s.runner == "python":
                command = self._python_command(python, tool, model, files.json, local)
                run, json_text, output = self._run_under_run_bench(target, script, files, command)
                bench = self._python_result(json_text, output)
            else:
                run, _, output = self._run_under_run_bench(target, script, files,
                                                           self._benchmark_model_command(tool, model))
                bench = self._benchmark_model_result(output)
            bench.update(one_rss(bench, run.get("peak_rss_bytes")))
        self.entry["bench"] = bench

    def _files(self, workdir: str) -> "_RunFiles":
        return _RunFiles(f"{workdir}/results", f"{_dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}")

    def _run_under_run_bench(self, target: Target, script: str, files: "_RunFiles",
                             command: list[str]) -> tuple[dict, str, str]:
        """One command under run_bench.sh -> (its result, the runner's JSON text, the command's output)."""
        s = self.settings
        self.say(f"{self.spec}: running the {s.runner} benchmark ({s.runs} runs, cores={s.cores})")
        argv = run_bench_argv(script, files.result, command, output=files.output, cores=s.cores,
                              cool_below_c=s.cool_below_c)
        try:
            target.shell(f"mkdir -p {quote(files.folder)} || exit 1\n{join(argv)}\n",
                         timeout=s.timeout_s + 300 + (s.duration_s or 0))
            run_text, json_text, output = files.collect(target)
        except BaseException:
            files.remove(target)
            raise
        run = parse_run_bench_result(run_text)
        # run_bench.sh's sampled VmHWM goes into the bench's one peak (one_rss), not beside it
        self.entry["run"] = {k: v for k, v in run.items() if k not in ("output", "schema", "peak_rss_bytes")}
        self._warn_about(run)
        if run["status"] != 0:
            detail = _error_line(output) or f"exit status {run['status']}"
            raise DeviceError(f"{self.spec}: the {s.runner} benchmark failed: {detail}")
        return run, json_text, output

    def _warn_about(self, run: dict) -> None:
        """--cores or --cool-below that had nothing to read on the device: one warning line each, once per device
        (run_bench.sh ran anyway, unpinned or without waiting, and said why in its result)."""
        warnings = self.entry.setdefault("warnings", [])
        for option, note in (("--cores", run.get("pin_note")), ("--cool-below", run.get("cool_note"))):
            line = f"{option}: {note}"
            if note and line not in warnings:
                warnings.append(line)
                self.say(f"{self.spec}: warning: {line}")

    def _gpt2_phases(self) -> list:
        """benchmark_model phases for a GPT-2 bundle (prefill, decode at each context), unless the user chose a
        signature (then that signature alone, as for any model)."""
        from liteship.runtime.bundle import Bundle

        from .benchmark_model import gpt2_phases

        if self.settings.signature or self.bundle.suffix == ".tflite":
            return []
        bundle = Bundle.open(self.bundle, verify=False)
        if bundle.family != "gpt2":
            return []
        return gpt2_phases(bundle.model_path, bundle.config, self.settings.contexts)

    def _benchmark_gpt2(self, target: Target, script: str, workdir: str, tool: str, model: str,
                        phases: list) -> dict:
        """Each phase under run_bench.sh; per-call times become tok/s. The result is decode's at the largest
        context, with a ``generation`` block for all of them."""
        results = []
        for phase in phases:
            self.say(f"{self.spec}: {phase.name} at a {phase.context}-slot context")
            command = self._benchmark_model_command(tool, model, signature=phase.signature, inputs=phase.input_flags)
            run, _, output = self._run_under_run_bench(target, script, self._files(workdir), command)
            phase_bench = self._benchmark_model_result(output)
            phase_bench.update(one_rss(phase_bench, run.get("peak_rss_bytes")))
            results.append((phase, phase_bench))

        def tok_s(phase, bench) -> float:
            return round(phase.tokens / (bench["latency_ms"]["mean"] / 1e3), 3)

        prefill = [(p, b) for p, b in results if p.name == "prefill"]
        decodes = [(p, b) for p, b in results if p.name == "decode"]
        last_phase, bench = decodes[-1]
        bench = dict(bench)
        # each phase is its own process: the run's peak (and the model's share) is the largest phase's
        for key in ("peak_rss_bytes", "model_rss_bytes"):
            known = [b[key] for _, b in results if b.get(key) is not None]
            bench[key] = max(known) if known else None
        bench["baseline_rss_bytes"] = (bench["peak_rss_bytes"] - bench["model_rss_bytes"]
                                       if bench["peak_rss_bytes"] is not None and bench["model_rss_bytes"] is not None
                                       else None)
        bench["generation"] = {
            "runner": "benchmark_model",
            "prefill_tokens": prefill[0][0].tokens if prefill else None,
            "prefill_tok_s": tok_s(*prefill[0]) if prefill else None,
            "decode_tokens": 1,
            "decode_tok_s": tok_s(last_phase, bench),
            "context": last_phase.context,
            "decode_by_context": [{"context": p.context, "tok_s": tok_s(p, b), "latency_ms": b["latency_ms"]}
                                  for p, b in decodes],
        }
        return bench

    def _check_python(self, facts: dict, python: str) -> None:
        if not facts["python"]:
            raise DeviceError(f"{self.spec}: no {python} on the device; install Python 3 with numpy and "
                              f"ai-edge-litert, or pass --benchmark-binary for the official benchmark_model")
        if not facts["python"]["numpy"] or not facts["tflite_runtime"]:
            missing = "numpy" if not facts["python"]["numpy"] else "TFLite interpreter"
            raise DeviceError(f"{self.spec}: {facts['python']['path']} has no {missing}; run `{python} -m pip "
                              f"install numpy ai-edge-litert` there (tflite-runtime on 32-bit boards)")

    def _check_runtime_version(self, facts: dict) -> None:
        """Refuse before pushing when the device's interpreter is older than the model needs (the runtime on the
        device applies the same rule, runtime.interpreter.runtime_too_old, when run there directly)."""
        from liteship.runtime.bundle import Bundle
        from liteship.runtime.interpreter import runtime_too_old
        from liteship.runtime.tflite_file import read_model

        py = facts["python"]
        backend = self.settings.backend
        if backend == "auto":  # the order runtime.interpreter's auto tries
            backend = "litert" if py["ai_edge_litert"] else "tflite-runtime" if py["tflite_runtime"] else "auto"
        version = {"litert": py["ai_edge_litert"], "tflite-runtime": py["tflite_runtime"]}.get(backend)
        needed = read_model(Bundle.open(self.bundle, verify=False).model_path).min_runtime_version()
        too_old = runtime_too_old(needed, backend, version)
        if too_old:
            raise DeviceError(f"{self.spec}: {self.bundle.name} {too_old}")

    def _place_bundle(self, target: Target, workdir: str, local: bool) -> str:
        """Where the model is on the target: the bundle folder, or the .tflite for a lone model."""
        if local:
            return str(self._local_bundle_root())
        self.say(f"{self.spec}: pushing {self.bundle.name}")
        pushed = push_bundle(target, self.bundle, workdir=workdir, progress=self.say)
        self.entry["push"] = pushed.as_dict()
        if self.bundle.suffix == ".tflite":  # a lone model travels as <name>/model.tflite, no manifest
            return pushed.remote_path + "/model.tflite"
        return pushed.remote_path

    def _place_runner(self, target: Target, workdir: str, local: bool) -> tuple[str, str | None]:
        """(run_bench.sh, the runtime zipapp or benchmark_model) on the target, cached there by hash; the host
        itself uses them where they are (the local python runner needs no zipapp)."""
        script = run_bench_script()
        s = self.settings
        if local:
            return str(script), s.benchmark_binary
        self.say(f"{self.spec}: checking the runner files")
        script_sha = sha256_file(script)
        files = [CachedFile(script, script_sha, f"{workdir}/bin", f"run_bench-{script_sha[:12]}.sh")]
        if s.runner == "python":
            files.append(runtime_file(workdir, _host_cache()))
        else:
            binary = Path(s.benchmark_binary)
            digest = sha256_file(binary)
            files.append(CachedFile(binary, digest, f"{workdir}/bin", f"benchmark_model-{digest[:12]}", mode="755"))
        remote_script, remote_tool = ensure_files_on_device(target, files)
        return remote_script, remote_tool

    def _python_command(self, python: str, runtime_zip: str | None, model: str, json_file: str,
                        local: bool) -> list[str]:
        s = self.settings
        command = [python, "-m", "liteship.runtime.bench"] if local else [python, runtime_zip, "bench"]
        command += [model, "--json", json_file, "--runs", str(s.runs), "--warmup", str(s.warmup)]
        for flag, value in (("--threads", s.threads), ("--signature", s.signature), ("--delegate", s.delegate),
                            ("--duration", s.duration_s),
                            ("--backend", None if s.backend == "auto" else s.backend)):
            if value:
                command += [flag, str(value)]
        return command

    def _benchmark_model_command(self, binary: str, model: str, *, signature: str | None = None,
                                 inputs: tuple[str, ...] = ()) -> list[str]:
        from .benchmark_model import benchmark_model_argv

        s = self.settings
        graph = model if model.endswith(".tflite") else f"{model}/model.tflite"
        return benchmark_model_argv(binary, graph, runs=s.runs, warmup=s.warmup, threads=s.threads,
                                    signature=signature or s.signature or self._default_signature(), inputs=inputs,
                                    op_profiling=s.op_profiling, extra=s.benchmark_args, delegate=s.delegate)

    def _default_signature(self) -> str | None:
        """With several signatures (GPT-2's prefill and decode) benchmark_model refuses to pick one: name the one
        the Python runner would time. A lone signature needs no flag."""
        from liteship.runtime.bench import default_signature
        from liteship.runtime.tflite_file import read_model

        path = self.bundle if self.bundle.suffix == ".tflite" else self.bundle / MODEL_NAME
        keys = [sig.key for sig in read_model(path).signatures]
        return default_signature(keys) if len(keys) > 1 else None

    def _python_result(self, json_text: str, output: str) -> dict:
        try:
            return json.loads(json_text)
        except json.JSONDecodeError:
            raise DeviceError(f"{self.spec}: the python benchmark wrote no result: "
                              f"{_error_line(output) or 'no output'}") from None

    def _benchmark_model_result(self, output: str) -> dict:
        from .benchmark_model import parse_benchmark_model_output

        bench = parse_benchmark_model_output(output)
        if bench["ignored_flags"]:
            raise DeviceError(f"{self.spec}: this benchmark_model does not know {' '.join(bench['ignored_flags'])} "
                              f"and ran without it; drop the flag or use a newer build")
        if (bench.get("latency_ms") or {}).get("mean") is None:
            raise DeviceError(f"{self.spec}: benchmark_model printed no timings: "
                              f"{_error_line(output) or 'empty output'}")
        return bench

    def _local_bundle_root(self) -> Path:
        from liteship.runtime.bundle import Bundle

        load_local_bundle(self.bundle)  # same checks as a push
        bundle = Bundle.open(self.bundle, verify=False)
        return bundle.model_path if self.bundle.suffix == ".tflite" else bundle.root


def one_rss(bench: dict, sampled_peak: int | None) -> dict:
    """The run's one peak RSS and the model's share of it (``liteship.runtime.bench.rss_figures``).

    The runner's own figure and run_bench.sh's sampled VmHWM describe the same process, and each can only fall
    short of its true peak (a sample can miss the last growth; benchmark_model's periodic monitor reads RSS, not
    the high-water mark): the larger is the peak. The model's share is the python runner's peak minus its baseline
    (VmHWM before the model was loaded), or benchmark_model's own "memory footprint delta" (overall)."""
    from liteship.runtime.bench import rss_figures

    known = [v for v in (bench.get("peak_rss_bytes"), sampled_peak) if v]
    peak = max(known) if known else None
    baseline = bench.get("baseline_rss_bytes")
    delta_mb = (bench.get("memory_mb") or {}).get("overall_delta")
    if baseline is None and peak is not None and delta_mb is not None:  # benchmark_model
        baseline = peak - round(delta_mb * MIB)
    return rss_figures(peak, baseline)


def _error_line(output: str) -> str:
    """The most telling line of a failed run: liteship's own 'error:' line, else an ERROR line, else the last."""
    lines = [l.strip() for l in output.splitlines() if l.strip()]
    for prefix in ("error:", "ERROR", "Error"):
        for line in reversed(lines):
            if line.startswith(prefix):
                return line
    return last_line(output)


def bench_targets(
    bundle: str | Path,
    specs: list[str],
    settings: BenchSettings,
    *,
    target_options: dict | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Benchmark ``bundle`` on every target in ``specs`` in parallel; returns the ``liteship.device-bench/1`` dict.

    Never raises for a device failure: each result has ``ok`` and ``error``. A bad local bundle raises at once.
    """
    bundle = Path(bundle)
    local = load_local_bundle(bundle)  # BundleError now, before any device is touched
    lock = threading.Lock()

    def say(message: str) -> None:
        if progress:
            with lock:
                progress(message)

    specs = list(dict.fromkeys(specs or ["local"]))
    runs = [_Run(bundle, spec, settings, dict(target_options or {}), say) for spec in specs]
    with ThreadPoolExecutor(max_workers=len(runs), thread_name_prefix="liteship-bench") as pool:
        entries = list(pool.map(lambda run: run(), runs))

    from liteship import __version__

    model = local.files.get(MODEL_NAME)
    return {
        "schema": SCHEMA,
        "created": utc_timestamp(),
        "bundle": {"path": str(bundle), "name": local.name, "model_sha256": model[0] if model else None,
                   "model_size_bytes": model[1] if model else None, "total_bytes": local.total_bytes},
        "settings": asdict(settings),
        "host": {"liteship": __version__, "python": platform.python_version(), "system": platform.system(),
                 "machine": platform.machine()},
        "results": entries,
    }


