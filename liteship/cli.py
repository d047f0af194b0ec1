"""liteship: fine-tuned model -> .tflite bundle -> phone or edge board, with proof of size and speed.

\b
  liteship demo                          build, convert, run and bench a small classifier on this host
  liteship convert savedmodel|keras|gpt2|bit SOURCE --quant MODE --out BUNDLE
  liteship prune bit|gpt2 SOURCE --out PRUNED --data DATA --method structured|magnitude --sparsity 0.5
  liteship qat bit SOURCE --out TUNED.npz --data IMAGES
  liteship run model|gpt2|bit BUNDLE ...
  liteship eval bit|gpt2 BUNDLE DATA [--reference BUNDLE] [--device TARGET]
  liteship inspect BUNDLE_OR_TFLITE
  liteship pack BUNDLE BUNDLE.zip
  liteship bench BUNDLE [--device TARGET ...]
  liteship check SOURCE_OR_BUNDLE... --budget budget.toml [--device TARGET ...]
  liteship report RESULTS... --html report.html [--md report.md]
  liteship compare OLD.json NEW.json     exit 1 on a regression (bootstrap interval over the per-run latencies)
  liteship device probe|push ...
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import tempfile

import click

from liteship import __version__
from liteship.errors import (
    EXIT_INTERRUPTED,
    check_interrupted,
    debug_enabled,
    describe,
    install_interrupt_handler,
    interrupt_locations,
    was_interrupted,
)
from liteship.progress import end_stage_line

# The one CLI tree. Each group maps to a package; each command lives in its stage's own module and is imported
# only when used. Command modules import TensorFlow inside the command body, so even `--help` never loads it.
COMMANDS: dict[str, dict[str, str]] = {
    "convert": {
        "savedmodel": "liteship.convert.cli:savedmodel",
        "keras": "liteship.convert.cli:keras",
        "gpt2": "liteship.convert.gpt2.cli:command",
        "bit": "liteship.convert.bit.cli:command",
    },
    "run": {
        "model": "liteship.runtime.cli:run_model",
        "gpt2": "liteship.runtime.text_cli:command",
        "bit": "liteship.runtime.image_cli:run_command",
    },
    "eval": {
        "bit": "liteship.runtime.image_cli:eval_command",
        "gpt2": "liteship.runtime.text_cli:eval_command",
    },
    "prune": {
        "bit": "liteship.convert.prune_cli:prune_bit_command",
        "gpt2": "liteship.convert.prune_cli:prune_gpt2_command",
    },
    "qat": {
        "bit": "liteship.convert.prune_cli:qat_bit_command",
    },
    "device": {
        "probe": "liteship.device.cli:probe",
        "push": "liteship.device.cli:push",
        "kinds": "liteship.device.cli:kinds",
    },
}
TOP_LEVEL: dict[str, str] = {
    "inspect": "liteship.runtime.cli:inspect",
    "pack": "liteship.runtime.cli:pack",
    "bench": "liteship.device.cli:bench",
    "check": "liteship.device.gate_cli:check",
    "report": "liteship.device.gate_cli:report",
    "compare": "liteship.device.gate_cli:compare",
    "demo": "liteship.demo:command",
}
GROUP_HELP = {
    "convert": "Checkpoint -> .tflite bundle (fp32, fp16, dynamic-int8, int8, int8x16).",
    "run": "Run a bundle on this machine (no TensorFlow needed).",
    "eval": "Measure a bundle's quality: accuracy on labeled data, perplexity on text.",
    "prune": "Checkpoint -> pruned, fine-tuned checkpoint of the same format (structured or magnitude).",
    "qat": "Checkpoint -> quantization-aware fine-tuned checkpoint, for full-integer int8.",
    "device": "Phones (adb) and boards (SSH): probe them, push bundles.",
}


def _load(target: str) -> click.Command:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


class LazyGroup(click.Group):
    """A click group whose commands are imported on first use."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy:
            command = _load(self.lazy[name])
            command.name = name
            return command
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            try:
                cmd = self.get_command(ctx, name)
                rows.append((name, cmd.get_short_help_str(70)))
            except ImportError as exc:  # an optional part (e.g. adb-shell) is not installed
                rows.append((name, f"(unavailable: {exc})"))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, lazy=TOP_LEVEL, help=__doc__, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="liteship")
def cli() -> None:
    pass


for _group, _commands in COMMANDS.items():
    cli.add_command(LazyGroup(name=_group, lazy=_commands, help=GROUP_HELP[_group]))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: any error is one line ``error: ...`` on stderr, exit 1 (2 for usage, 130 on Ctrl-C),
    never a traceback unless LITESHIP_DEBUG=1 asks for the whole chain.

    Run as the program (``argv`` None) the process ends right after the outcome is printed: TensorFlow's exit
    handlers take seconds, and a Ctrl-C in them used to end a finished run with a traceback or a signal death.
    Called with ``argv`` (from tests) it raises SystemExit and leaves the caller's SIGINT handler as it was."""
    import signal

    previous, previous_hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    install_interrupt_handler()
    try:
        code = _run(argv)
    finally:
        if argv is not None:
            signal.signal(signal.SIGINT, previous)
            sys.unraisablehook = previous_hook
    if argv is None:
        _exit_now(code)
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        # In-process callers (tests) keep their own stderr capture: only the program hides native noise.
        with native_noise_hidden() if argv is None else contextlib.nullcontext():
            try:
                rv = cli.main(args=argv, prog_name="liteship", standalone_mode=False)
            finally:  # a stage line still redrawn ends while its stream is open, before any error line
                end_stage_line()
        check_interrupted()  # a Ctrl-C that a library swallowed still ends the run with 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # noqa: BLE001 - the one place every exception becomes a line and an exit code
        if debug_enabled() and was_interrupted():
            click.echo(f"SIGINT arrived at {', '.join(interrupt_locations())}", err=True)
        return report(exc)
    return rv if isinstance(rv, int) else 0


# What TensorFlow, absl, oneDNN, CUDA probing and TFLite's XNNPACK delegate print from C++ on every run: INFO and
# WARNING lines of absl's log format (I0000 ..., W0000 ...), TFLite's "INFO: Created TensorFlow Lite XNNPACK
# delegate", the CUDA probe's error lines on a machine without a GPU.
NATIVE_NOISE = re.compile(
    r"^([IW]\d{4} |INFO: |WARNING: All log messages before absl|E\d{4} .*(cuda|cuInit|cuDNN|cuFFT|cuBLAS)"
    r"|.*(oneDNN custom operations|TF_ENABLE_ONEDNN_OPTS|rebuild TensorFlow with the appropriate compiler flags"
    r"|This TensorFlow binary is optimized|TF-TRT Warning|Could not find cuda drivers|computation placer))")


@contextlib.contextmanager
def native_noise_hidden():
    """Runs the block with the C/C++ side's stderr (file descriptor 2) going to a temporary file, while Python's
    sys.stderr (liteship's progress and errors, Python warnings) still reaches the terminal. Afterwards the captured
    lines that are not known noise (a real native error) are shown. LITESHIP_VERBOSE=1 shows everything as it
    comes."""
    if os.environ.get("LITESHIP_VERBOSE", "") not in ("", "0"):
        yield
        return
    try:
        sys.stderr.flush()
        real = os.dup(2)
    except (OSError, AttributeError, ValueError):  # no usable stderr
        yield
        return
    sink = tempfile.TemporaryFile()
    python_stderr = sys.stderr
    os.dup2(sink.fileno(), 2)
    sys.stderr = open(real, "w", buffering=1, encoding=getattr(python_stderr, "encoding", None) or "utf-8",
                      errors="backslashreplace", closefd=False)
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        sys.stderr = python_stderr
        os.dup2(real, 2)
        os.close(real)
        sink.seek(0)
        kept = [line for line in sink.read().decode("utf-8", "replace").splitlines()
                if line.strip() and not NATIVE_NOISE.match(line)]
        sink.close()
        for line in kept:
            click.echo(line, err=True)


def _exit_now(code: int) -> None:
    """Flushes and ends the process without running exit handlers (none of liteship's: its temporary files are
    removed by the code that made them)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the outcome is decided and printed
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def report(exc: BaseException) -> int:
    """Prints ``exc`` the way the CLI promises and returns the exit code."""
    code, message = describe(exc)
    if was_interrupted():  # a Ctrl-C that a library turned into its own error (pybind11, TF's loaders) is still one
        code, message = EXIT_INTERRUPTED, "interrupted"
    if debug_enabled():
        _print_chain(exc)
    elif isinstance(exc, click.exceptions.UsageError) and exc.ctx is not None:
        click.echo(exc.ctx.get_usage(), err=True)
        click.echo(f"Try '{exc.ctx.command_path} {exc.ctx.help_option_names[0]}' for help.", err=True)
    try:
        click.echo(f"error: {message}", err=True)
    except OSError:  # stderr itself is gone (a closed pipe): the exit code still tells
        pass
    return code


def _print_chain(exc: BaseException) -> None:
    """The full traceback chain, including the causes hidden by ``raise ... from None``."""
    import traceback

    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__suppress_context__ = False
        e = e.__cause__ or e.__context__
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


if __name__ == "__main__":
    main()
