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

import importlib
import os
import sys

import click

from liteship import __version__
from liteship.errors import LiteshipError

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
    """Console entry point: a user error is one line on stderr and exit 1, never a traceback."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        rv = cli.main(args=argv, prog_name="liteship", standalone_mode=False)
    except LiteshipError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
