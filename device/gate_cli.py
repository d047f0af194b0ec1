"""`liteship check`, `liteship report` and `liteship compare`: the commands that gate a model's release."""

from __future__ import annotations

import json
from pathlib import Path

import click

from liteship.errors import LiteshipError
from liteship.options import NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_INT, SEED, Number, Threads

from .cli import PYTHON_HELP, TARGET_HELP, _progress, adb_options, target_options


class BudgetExceeded(LiteshipError):
    """Some variant x device cell is over its budget (or could not be measured): exit 1 after the table."""


class Regression(LiteshipError):
    """`compare` found a change past its threshold whose confidence interval excludes zero."""


class QuantList(click.ParamType):
    """``fp32,dynamic-int8``: quantization modes, each checked like every converter's --quant (a usage error
    naming the option and the mode), before anything is converted."""

    name = "modes"

    def convert(self, value, param, ctx):
        from liteship.convert.quant import Quant

        if isinstance(value, list):
            return value
        modes = [q.strip() for q in str(value).split(",") if q.strip()]
        known = [q.value for q in Quant]
        for mode in modes or [str(value)]:
            if mode not in known:
                self.fail(f"{mode!r} is not one of {', '.join(known)}", param, ctx)
        return list(dict.fromkeys(modes))


@click.command("check")
@click.argument("inputs", nargs=-1, required=True, metavar="SOURCE_OR_BUNDLE...")
@click.option("--budget", "budget_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file of limits, global and per [device.\"TARGET\"] (see liteship.device.budget).")
@click.option("--device", "-d", "devices", multiple=True, metavar="TARGET",
              help=f"Where to benchmark ({TARGET_HELP}); repeatable. Default: local.")
@click.option("--quant", "quant", type=QuantList(), default="fp32", show_default=True,
              help="Variants to convert a SOURCE into, comma-separated: fp32,fp16,dynamic-int8,int8,int8x16.")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Quality data: a text file (GPT-2) or a folder of class folders (classifiers).")
@click.option("--results", "-o", "--out", "--output", "results_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("liteship-check"), show_default=True,
              help="Folder for check.json; a run that finds one resumes it.")
@click.option("--runs", type=POSITIVE_INT, default=50, show_default=True, help="Timed runs per cell.")
@click.option("--warmup", type=NON_NEGATIVE_INT, default=5, show_default=True, help="Untimed warm-up runs.")
@click.option("--threads", type=Threads(), default=None, help="Interpreter threads.")
@click.option("--cores", type=click.Choice(["all", "big", "fastest"]), default="all", show_default=True,
              help="Which cores the benchmark is pinned to.")
@click.option("--cool-below", type=POSITIVE_INT, default=None, metavar="DEG_C",
              help="Wait until every thermal zone reads below DEG_C before each benchmark.")
@click.option("--python", "python", default=None, help=PYTHON_HELP)
@click.option("--max-context", type=Number(int, min=2), default=None, help="GPT-2 sources: bundle context.")
@click.option("--prefill-len", type=POSITIVE_INT, default=None, help="GPT-2 sources: prefill chunk.")
@click.option("--calibration", type=click.Path(exists=True, path_type=Path), default=None,
              help="Keras/SavedModel sources: calibration data for int8 and int8x16.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Keras/SavedModel sources: labels, one per line.")
@click.option("--json", "as_json", is_flag=True, help="Print check.json (liteship.check/1) instead of the table.")
@adb_options
def check(inputs, budget_path, devices, quant, data, results_dir, runs, warmup, threads, cores, cool_below, python,
          max_context, prefill_len, calibration, labels, as_json, adb_key, adb_auth_timeout, adb_timeout) -> None:
    """Check that each variant fits the BUDGET on each device: exit 0 only if every cell passes.

    A SOURCE (GPT-2 checkpoint folder, SavedModel folder, .keras/.h5 file) is converted once per --quant mode,
    reusing an identical earlier conversion; a BUNDLE is checked as it is. Each variant is pushed to and
    benchmarked on every --device, evaluated on --data against the fp32 variant of the same source, and judged:
    one table, variant x device, each limit pass/fail with the measured value and the margin.

    One failing device keeps the others' results. RESULTS/check.json is rewritten after every cell, so an
    interrupted run, started again, skips the cells it finished.
    """
    from .bench import BenchSettings
    from .budget import load_budget
    from .budget_table import failures, format_text
    from .check import RESULTS_FILE, ConvertOptions, run_check

    budget = load_budget(budget_path)  # before any conversion: a typo in the budget costs nothing
    settings = BenchSettings(runs=runs, warmup=warmup, threads=threads, cores=cores, cool_below_c=cool_below,
                             python=python)
    options = ConvertOptions(max_context=max_context, prefill_len=prefill_len,
                             calibration=str(calibration) if calibration else None,
                             labels=str(labels) if labels else None)
    doc = run_check(list(inputs), budget, devices=list(devices), quants=quant, results_dir=results_dir,
                    settings=settings, data=data, options=options, progress=_progress,
                    target_options=target_options(adb_key, adb_auth_timeout, adb_timeout))
    click.echo(json.dumps(doc, indent=2) if as_json else format_text(doc))
    if not doc["passed"]:
        for line in failures(doc):
            click.echo(f"  {line}", err=True)
        failed = sum(1 for c in doc["cells"] if not c["passed"])
        raise BudgetExceeded(f"{failed} of {len(doc['cells'])} cells over budget (details in "
                             f"{results_dir / RESULTS_FILE})")


@click.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path),
                metavar="RESULTS...")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the self-contained HTML report (inline SVG plots, no network) here.")
@click.option("--md", "md_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the Markdown summary (for a pull request) here.")
def report(results, html_out, md_out) -> None:
    """Turn check.json (liteship.check/1) and bench --json (liteship.device-bench/1) results into a report.

    RESULTS are files or --results folders of `liteship check`. Without --html or --md the Markdown goes to stdout.
    """
    from liteship.runtime.files import write_atomic

    from .html_report import render_html, render_markdown

    markdown = render_markdown(list(results))  # reads every input first: a bad one leaves old outputs intact
    html = render_html(list(results)) if html_out else None
    if html_out:
        write_atomic(html_out, html.rstrip("\n") + "\n", mkdir=True)
        click.echo(f"wrote {html_out}", err=True)
    if md_out:
        write_atomic(md_out, markdown.rstrip("\n") + "\n", mkdir=True)
        click.echo(f"wrote {md_out}", err=True)
    if not html_out and not md_out:
        click.echo(markdown, nl=False)


@click.command("compare")
@click.argument("old", type=click.Path(exists=True, path_type=Path))
@click.argument("new", type=click.Path(exists=True, path_type=Path))
@click.option("--threshold", type=NON_NEGATIVE_FLOAT, default=5.0, show_default=True, metavar="PCT",
              help="Smallest change, in percent, that can count as a regression or an improvement.")
@click.option("--confidence", type=Number(float, min=0.5, max=0.999), default=0.95, show_default=True,
              help="Confidence of the bootstrap interval.")
@click.option("--resamples", type=Number(int, min=100), default=2000, show_default=True,
              help="Bootstrap resamples per metric.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the resampling (reproducible).")
@click.option("--json", "as_json", is_flag=True, help="Print the changes as JSON.")
def compare(old, new, threshold, confidence, resamples, seed, as_json) -> None:
    """Compare two results (check.json or bench --json) per metric and device: exit 1 on a regression.

    Latency changes come with a bootstrap confidence interval over the per-run samples; a change is flagged
    only when its interval excludes zero and it is larger than --threshold.
    """
    from .compare import compare_files, format_changes

    changes = compare_files(old, new, threshold_pct=threshold, seed=seed, resamples=resamples,
                            confidence=confidence)
    if not changes:
        raise LiteshipError(f"{old} and {new} share no variant x device cell with results to compare")
    click.echo(json.dumps([c.as_dict() for c in changes], indent=2) if as_json else format_changes(changes))
    regressions = [c for c in changes if c.verdict == "regression"]
    if regressions:
        raise Regression(f"{len(regressions)} regression(s): " + "; ".join(
            f"{c.cell} {c.metric} {c.change_pct:+.1f}%" for c in regressions))
