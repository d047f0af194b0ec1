"""liteship: fine-tuned model -> .tflite bundle -> phone or edge board, with proof of size and speed.

\b
  liteship demo                          build, convert, run and bench a small classifier on this host
  liteship convert savedmodel|keras|gpt2|bit SOURCE --quant MODE --out BUNDLE
  liteship run model|gpt2|bit BUNDLE ...
  liteship inspect BUNDLE_OR_TFLITE
  liteship pack BUNDLE BUNDLE.zip
  liteship bench BUNDLE [--device TARGET ...]
  liteship device probe|push ...
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from liteship import __version__
from liteship.errors import debug_enabled, describe

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
    "demo": "liteship.demo:command",
}
GROUP_HELP = {
    "convert": "Checkpoint -> .tflite bundle (fp32, fp16, dynamic-int8, int8, int8x16).",
    "run": "Run a bundle on this machine (no TensorFlow needed).",
    "eval": "Measure a bundle's accuracy on labeled data.",
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
    never a traceback unless LITESHIP_DEBUG=1 asks for the whole chain."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        rv = cli.main(args=argv, prog_name="liteship", standalone_mode=False)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the one place every exception becomes a line and an exit code
        sys.exit(report(exc))
    sys.exit(rv if isinstance(rv, int) else 0)


def report(exc: BaseException) -> int:
    """Prints ``exc`` the way the CLI promises and returns the exit code."""
    code, message = describe(exc)
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
