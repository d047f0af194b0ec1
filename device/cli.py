"""Device commands: `liteship device probe|push|kinds` and `liteship bench` (on this host or on devices).

TARGET is ``local``, ``ssh:[user@]host[:port]``, ``ssh:ALIAS`` (from ~/.ssh/config), ``adb`` ($ANDROID_SERIAL),
``adb:SERIAL``, ``adb:HOST:PORT`` or ``adb-server[:SERIAL]`` (through a running adb server), each optionally with
``?python=PATH`` (that device's interpreter; see device/base.py). ``LITESHIP_SSH_CONFIG=FILE`` makes ssh use FILE
instead of ~/.ssh/config.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from liteship.errors import DeviceError
from liteship.options import NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, Number, Threads
from liteship.runtime.files import check_creatable

TARGET_HELP = ("local, ssh:[user@]host[:port], ssh:ALIAS, adb, adb:SERIAL, adb:HOST:PORT or adb-server[:SERIAL]"
               "[?server=HOST:PORT]; any of them ?python=PATH")
PYTHON_HELP = "The devices' Python where a spec gives no ?python= (default python3; this one for local)."


def _progress(message: str) -> None:
    click.echo(message, err=True)


def adb_options(fn):
    """Options for Android targets; other kinds ignore them. They reach the target as open_target() options."""
    options = [
        click.option("--adb-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="adb private key (default ~/.android/adbkey; created 0600 if absent)."),
        click.option("--adb-auth-timeout", type=POSITIVE_FLOAT, default=None, metavar="S",
                     help="Seconds to wait for 'Allow USB debugging?' to be accepted on the phone (default 60)."),
        click.option("--adb-timeout", type=POSITIVE_FLOAT, default=None, metavar="S",
                     help="Seconds one adb command may run when liteship sets no limit of its own (default 900)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def target_options(adb_key, adb_auth_timeout, adb_timeout) -> dict:
    given = {"adb_key": adb_key, "auth_timeout_s": adb_auth_timeout, "command_timeout_s": adb_timeout}
    return {k: v for k, v in given.items() if v is not None}


@click.command("probe")
@click.argument("target", metavar="TARGET")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
@click.option("--workdir", default=None, help="Working folder on the device (default: the target's own).")
@click.option("--python", "python", default=None, help=PYTHON_HELP)
@adb_options
def probe(target: str, as_json: bool, workdir: str | None, python: str | None, adb_key, adb_auth_timeout,
          adb_timeout) -> None:
    """Say what a device is: model, SoC, ABI, cores, OS, free storage, Python/TFLite, thermal zones.

    TARGET is local, ssh:[user@]host[:port], ssh:ALIAS, adb, adb:SERIAL, adb:HOST:PORT or adb-server[:SERIAL]
    (a phone a running adb server holds; ?server=HOST:PORT for one on another host); any with ?python=PATH.
    """
    from .base import device_python, open_target
    from .probe import format_probe
    from .probe import probe as run_probe

    with open_target(target, **target_options(adb_key, adb_auth_timeout, adb_timeout)) as device:
        facts = run_probe(device, workdir=workdir, python=device_python(device, python))
    click.echo(json.dumps(facts, indent=2) if as_json else format_probe(facts))


@click.command("push")
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.argument("target", metavar="TARGET")
@click.option("--workdir", default=None, help="Working folder on the device (default: the target's own).")
@click.option("--name", default=None, help="Name of the bundle on the device (default: its folder name).")
@click.option("--json", "as_json", is_flag=True, help="Print what was sent as JSON.")
@adb_options
def push(bundle: Path, target: str, workdir: str | None, name: str | None, as_json: bool, adb_key,
         adb_auth_timeout, adb_timeout) -> None:
    """Copy BUNDLE to TARGET, verify every file's sha256 there, and place it atomically.

    Files already on the device with the same hash are not sent again. A dropped connection, a full disk or a
    checksum mismatch is an error and leaves no partial bundle.
    """
    from .base import open_target
    from .push import push_bundle

    with open_target(target, **target_options(adb_key, adb_auth_timeout, adb_timeout)) as device:
        result = push_bundle(device, bundle, workdir=workdir, name=name, progress=_progress)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo(result.remote_path)


@click.command("kinds")
def kinds() -> None:
    """List the registered device kinds and the specs they answer to."""
    from .base import registered_kinds

    for kind, entry in registered_kinds().items():
        factory = entry.factory if isinstance(entry.factory, str) else getattr(entry.factory, "__qualname__", "?")
        click.echo(f"{kind:<10} {', '.join(p + '[:...]' for p in entry.prefixes):<20} {factory}")


@click.command("bench")
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--device", "-d", "devices", multiple=True, metavar="TARGET",
              help=f"Where to run ({TARGET_HELP}); repeat for several devices, run in parallel. Default: local.")
@click.option("--threads", type=Threads(), default=None, help="Interpreter threads (default: the runtime's).")
@click.option("--runs", type=POSITIVE_INT, default=50, show_default=True, help="Timed runs.")
@click.option("--warmup", type=NON_NEGATIVE_INT, default=5, show_default=True, help="Untimed warm-up runs.")
@click.option("--cores", type=click.Choice(["all", "big", "fastest"]), default="all", show_default=True,
              help="Pin to the big cores (all but the slowest cluster, by cpu_capacity or max frequency) or to the "
                   "fastest cluster only; the probe names both.")
@click.option("--cool-below", type=Number(int, min=1, max=150), default=None, metavar="DEG_C",
              help="Wait until every thermal zone reads below DEG_C before running.")
@click.option("--benchmark-binary", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The official benchmark_model binary for the device's ABI (pushed once, cached by hash).")
@click.option("--python", "python", default=None, help=PYTHON_HELP)
@click.option("--signature", default=None, help="Signature to time (default: decode, else serving_default).")
@click.option("--backend", default="auto", show_default=True,
              help="liteship runner: interpreter package: auto, litert, tflite-runtime or tf.")
@click.option("--delegate", default=None,
              help="liteship runner: a delegate (e.g. edgetpu or a .so path); "
                   "benchmark_model: xnnpack, gpu, nnapi or hexagon.")
@click.option("--benchmark-arg", "benchmark_args", multiple=True, metavar="--NAME=VALUE",
              help="benchmark_model: one more of its own flags, passed through (repeat; checked against its list).")
@click.option("--context", "contexts", type=POSITIVE_INT, multiple=True, metavar="SLOTS",
              help="benchmark_model on GPT-2: time a decode step at this many cache slots (repeat; default 128, "
                   "512 and 1024, below the bundle's max context).")
@click.option("--op-profiling", is_flag=True,
              help="benchmark_model: --enable_op_profiling; the report lists the op types taking the most time.")
@click.option("--workdir", default=None, help="Working folder on the devices (default: each target's own).")
@click.option("--duration", default=None, metavar="TIME",
              help="Also run back to back for TIME (90s, 10m, 1h), recording throughput and temperature over time.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path), default=None,
              is_flag=False, flag_value="-",
              help="Print all results (liteship.device-bench/1) as JSON on stdout, the report on stderr, like the "
                   "other commands' --json; --json FILE (or -o FILE) writes them to FILE instead.")
@click.option("--output", "-o", "--out", "json_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the JSON results to this file.")
@click.option("--report", "report_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the Markdown report to this file.")
@adb_options
def bench(bundle: Path, devices: tuple[str, ...], threads, runs, warmup, cores, cool_below, benchmark_binary,
          python, signature, backend, delegate, benchmark_args, contexts, op_profiling, workdir, duration, json_out,
          json_file, report_out, adb_key, adb_auth_timeout, adb_timeout) -> None:
    """Benchmark BUNDLE on this host or on phones and boards: init, first inference, latency percentiles,
    peak memory, GPT-2 tok/s, with the device's facts.

    With several --device options the devices run in parallel; one failing device does not lose the others'
    results (the command then exits 1 after writing them).
    """
    from liteship.runtime.files import write_atomic, write_json_atomic
    from liteship.runtime.sustained import parse_duration

    from .bench import BenchSettings, bench_targets
    from .report import markdown_report

    if json_file is not None:
        if json_out is not None and str(json_out) != "-":
            raise click.UsageError("give the JSON file once: --json FILE or -o FILE")
        json_out = json_file
    for out in (json_out, report_out):
        if out is not None and str(out) != "-":
            check_creatable(out, error=DeviceError)  # before any device time is spent

    settings = BenchSettings(runs=runs, warmup=warmup, threads=threads, cores=cores, cool_below_c=cool_below,
                             benchmark_binary=benchmark_binary, python=python, signature=signature,
                             backend=backend, delegate=delegate, benchmark_args=tuple(benchmark_args),
                             op_profiling=op_profiling, workdir=workdir,
                             duration_s=parse_duration(duration) if duration else None,
                             **({"contexts": tuple(contexts)} if contexts else {}))
    document = bench_targets(bundle, list(devices) or ["local"], settings, progress=_progress,
                             target_options=target_options(adb_key, adb_auth_timeout, adb_timeout))
    report = markdown_report(document)
    to_stdout = json_out is not None and str(json_out) == "-"
    if json_out and not to_stdout:
        write_json_atomic(json_out, document)
    if report_out:
        write_atomic(report_out, report + "\n", mkdir=True)
    click.echo(report, err=to_stdout)
    if to_stdout:
        click.echo(json.dumps(document, indent=2))
    failed = [e for e in document["results"] if not e["ok"]]
    if failed:
        raise DeviceError(f"{len(failed)} of {len(document['results'])} devices failed: "
                          + "; ".join(e["target"] for e in failed)
                          + (f" (details in {json_out})" if json_out and not to_stdout else " (details above)"))


