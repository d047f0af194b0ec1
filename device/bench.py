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
import os
import platform
import secrets
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from liteship.errors import DeviceError, LiteshipError
from liteship.runtime.tflite_file import sha256_file

from .base import Target, join, last_line, open_target, quote
from .probe import probe
from .push import load_local_bundle, push_bundle
from .runtime_pack import CachedFile, ensure_files_on_device, runtime_file

SCHEMA = "liteship.device-bench/1"
RUNNERS = ("python", "benchmark_model")
CORES = ("all", "big", "fastest")
# --delegate NAME -> the flag benchmark_model takes for it (tensorflow/lite/tools/delegates/*_delegate_provider.cc).
BENCHMARK_MODEL_DELEGATE_FLAGS = {
    "xnnpack": "--use_xnnpack=true",
    "gpu": "--use_gpu=true",
    "nnapi": "--use_nnapi=true",
    "hexagon": "--use_hexagon=true",
}


@dataclass(frozen=True)
class BenchSettings:
    runs: int = 50
    warmup: int = 5
    threads: int | None = None
    cores: str = "all"                       # all | big | fastest (see android_bench/run_bench.sh)
    cool_below_c: int | None = None          # wait for every thermal zone to read below this before running
    benchmark_binary: str | None = None      # host path of benchmark_model for the device's ABI -> that runner
    python: str | None = None                # the device's interpreter (default: python3; the host's for local)
    signature: str | None = None
    backend: str = "auto"                    # python runner: which interpreter package (see runtime.interpreter)
    delegate: str | None = None              # python runner: passed on; benchmark_model: one of its --use_* flags
    workdir: str | None = None               # default: the target's own default_workdir()
    timeout_s: float = 1800.0                # for the benchmark command itself

    def __post_init__(self) -> None:
        if self.runs < 1 or self.warmup < 0:
            raise DeviceError("--runs must be >= 1 and --warmup >= 0")
        if self.cores not in CORES:
            raise DeviceError(f"--cores must be one of {', '.join(CORES)}, not {self.cores!r}")
        if self.threads is not None and self.threads < 1:
            raise DeviceError("--threads must be >= 1")
        if self.benchmark_binary and not Path(self.benchmark_binary).is_file():
            raise DeviceError(f"--benchmark-binary {self.benchmark_binary}: no such file")
        if self.benchmark_binary and self.delegate and self.delegate not in BENCHMARK_MODEL_DELEGATE_FLAGS:
            raise DeviceError(f"benchmark_model knows the delegates {', '.join(BENCHMARK_MODEL_DELEGATE_FLAGS)}, "
                              f"not {self.delegate!r}")
        if self.benchmark_binary and self.backend != "auto":
            raise DeviceError("--backend chooses liteship's Python interpreter; it does not apply to benchmark_model")

    @property
    def runner(self) -> str:
        return "benchmark_model" if self.benchmark_binary else "python"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _host_cache() -> Path:
    return Path(os.environ.get("LITESHIP_CACHE", Path.home() / ".cache" / "liteship")) / "runtime-pack"


def _run_bench_tools():
    # D2's module holds the run_bench.sh helpers; importing it does not import adb-shell.
    from .android import parse_run_bench_result, run_bench_argv, run_bench_script

    return run_bench_script, run_bench_argv, parse_run_bench_result


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
        s = self.settings
        local = target.kind == "local"
        workdir = (s.workdir or target.default_workdir()).rstrip("/")
        python = s.python or (sys.executable if local else "python3")

        self.say(f"{self.spec}: probing")
        facts = probe(target, workdir=workdir, python=python)
        self.entry["device"] = facts

        if s.runner == "python":
            if not facts["python"]:
                raise DeviceError(f"{self.spec}: no {python} on the device; install Python 3 with numpy and "
                                  f"ai-edge-litert, or pass --benchmark-binary for the official benchmark_model")
            if not facts["python"]["numpy"] or not facts["tflite_runtime"]:
                missing = "numpy" if not facts["python"]["numpy"] else "TFLite interpreter"
                raise DeviceError(f"{self.spec}: {facts['python']['path']} has no {missing}; run `{python} -m pip "
                                  f"install numpy ai-edge-litert` there (tflite-runtime on 32-bit boards)")

        if local:
            remote_bundle = str(self._local_bundle_root())
        else:
            self.say(f"{self.spec}: pushing {self.bundle.name}")
            pushed = push_bundle(target, self.bundle, workdir=workdir, progress=self.say)
            self.entry["push"] = pushed.as_dict()
            remote_bundle = pushed.remote_path
            if self.bundle.suffix == ".tflite":  # a lone model travels as <name>/model.tflite, no manifest
                remote_bundle += "/model.tflite"

        script_path, run_bench_argv, parse_result = _run_bench_tools()
        script = script_path()
        results_dir = f"{workdir}/results"
        run_id = f"{_dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
        result_file, output_file = f"{results_dir}/{run_id}.result", f"{results_dir}/{run_id}.out"
        json_file = f"{results_dir}/{run_id}.json"

        # What the device runs, cached there by hash (the host itself uses them where they are).
        if local:
            remote_script, remote_tool = str(script), s.benchmark_binary
        else:
            self.say(f"{self.spec}: checking the runner files")
            script_sha = sha256_file(script)
            tools = [CachedFile(script, script_sha, f"{workdir}/bin", f"run_bench-{script_sha[:12]}.sh")]
            if s.runner == "python":
                tools.append(runtime_file(workdir, _host_cache()))
            else:
                binary = Path(s.benchmark_binary)
                digest = sha256_file(binary)
                tools.append(CachedFile(binary, digest, f"{workdir}/bin", f"benchmark_model-{digest[:12]}",
                                        mode="755"))
            remote_script, remote_tool = ensure_files_on_device(target, tools)

        if s.runner == "python":
            command = [python, "-m", "liteship.runtime.bench"] if local else [python, remote_tool, "bench"]
            command += [remote_bundle, "--json", json_file, "--runs", str(s.runs), "--warmup", str(s.warmup)]
            if s.threads:
                command += ["--threads", str(s.threads)]
            if s.signature:
                command += ["--signature", s.signature]
            if s.backend != "auto":
                command += ["--backend", s.backend]
            if s.delegate:
                command += ["--delegate", s.delegate]
        else:
            graph = remote_bundle if remote_bundle.endswith(".tflite") else f"{remote_bundle}/model.tflite"
            command = [remote_tool, f"--graph={graph}", f"--num_runs={s.runs}",
                       f"--warmup_runs={s.warmup}", "--min_secs=0", "--warmup_min_secs=0"]
            if s.threads:
                command.append(f"--num_threads={s.threads}")
            if s.signature:
                command.append(f"--signature_to_run_for={s.signature}")
            if s.delegate:
                command.append(BENCHMARK_MODEL_DELEGATE_FLAGS[s.delegate])

        self.say(f"{self.spec}: running the {s.runner} benchmark ({s.runs} runs, cores={s.cores})")
        argv = run_bench_argv(remote_script, result_file, command, output=output_file, cores=s.cores,
                              cool_below_c=s.cool_below_c)
        try:
            target.shell(f"mkdir -p {quote(results_dir)} || exit 1\n{join(argv)}\n", timeout=s.timeout_s + 300)
            run_text, json_text, output = self._collect(target, result_file, json_file, output_file)
        except BaseException:
            try:
                target.run(["rm", "-f", result_file, output_file, json_file], timeout=60, check=False)
            except Exception:
                pass
            raise
        run = parse_result(run_text)
        self.entry["run"] = {k: v for k, v in run.items() if k not in ("output", "schema")}
        if run["status"] != 0:
            detail = _error_line(output) or f"exit status {run['status']}"
            raise DeviceError(f"{self.spec}: the {s.runner} benchmark failed: {detail}")
        if s.runner == "python":
            try:
                bench = json.loads(json_text)
            except json.JSONDecodeError:
                raise DeviceError(f"{self.spec}: the python benchmark wrote no result: "
                                  f"{_error_line(output) or 'no output'}") from None
        else:
            from .benchmark_model import parse_benchmark_model_output

            bench = parse_benchmark_model_output(output)
            if (bench.get("latency_ms") or {}).get("mean") is None:
                raise DeviceError(f"{self.spec}: benchmark_model printed no timings: "
                                  f"{_error_line(output) or 'empty output'}")
        if bench.get("peak_rss_bytes") is None:
            bench["peak_rss_bytes"] = run.get("peak_rss_bytes")
        self.entry["bench"] = bench

    @staticmethod
    def _collect(target: Target, *paths: str) -> list[str]:
        """Read the result, JSON and (the tail of the) output files, and delete them, in one round trip."""
        marker = f"--liteship-{secrets.token_hex(8)}--"
        script = "\n".join(f"tail -c 262144 {quote(p)} 2>/dev/null; echo; echo {marker}" for p in paths)
        script += f"\nrm -f {' '.join(quote(p) for p in paths)}\n"  # read once, then gone
        parts = target.shell(script, timeout=120, check=False).stdout.split(f"\n{marker}\n")
        return [(parts[i] if i < len(parts) else "").strip("\n") for i in range(len(paths))]

    def _local_bundle_root(self) -> Path:
        from liteship.runtime.bundle import Bundle

        load_local_bundle(self.bundle)  # same checks as a push
        bundle = Bundle.open(self.bundle, verify=False)
        return bundle.model_path if self.bundle.suffix == ".tflite" else bundle.root


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

    model = local.files.get("model.tflite")
    return {
        "schema": SCHEMA,
        "created": _now(),
        "bundle": {"path": str(bundle), "name": local.name, "model_sha256": model[0] if model else None,
                   "model_size_bytes": model[1] if model else None, "total_bytes": local.total_bytes},
        "settings": asdict(settings),
        "host": {"liteship": __version__, "python": platform.python_version(), "system": platform.system(),
                 "machine": platform.machine()},
        "results": entries,
    }


def write_json_atomic(path: str | Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
