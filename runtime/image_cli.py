"""`liteship run bit` and `liteship eval bit`: image classification from the command line (no TensorFlow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from liteship.errors import RuntimeLiteshipError
from liteship.options import POSITIVE_INT, Threads

# User errors are LiteshipError subclasses raised as they are: liteship.cli.main prints them on one line, exit 1.


@click.command("bit")
@click.argument("bundle", type=click.Path(exists=True))
@click.argument("image_or_dir", type=click.Path(exists=True))
@click.option("--top-k", "top_k", default=5, show_default=True, type=POSITIVE_INT, help="Labels per image.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
@click.option("--threads", type=Threads(), default=None, help="Interpreter threads (default: backend's).")
@click.option("--backend", default="auto", show_default=True, help="Interpreter: auto, litert, tflite-runtime or tf.")
def run_command(bundle, image_or_dir, top_k, as_json, threads, backend):
    """Top-k labels for an image, or for every image under a folder.

    BUNDLE is a BiT or other image-classifier bundle. Images are decoded, resized and normalized exactly as
    the bundle's manifest says. Files that are not images are reported on stderr and skipped. Progress for
    folders goes to stderr.
    """
    from liteship.runtime.classify import ImageClassifier, Skipped
    from liteship.runtime.images import iter_files

    classifier = ImageClassifier(bundle, threads=threads, backend=backend)
    files = iter_files(image_or_dir)
    predictions, skipped = [], []
    show_progress = Path(image_or_dir).is_dir()
    with click.progressbar(length=len(files), label="classifying", file=sys.stderr, hidden=not show_progress) as bar:
        for result in classifier.iter_classify(files, top_k=top_k):
            bar.update(1)
            if isinstance(result, Skipped):
                skipped.append(result)
                if not as_json:
                    click.echo(f"skipped {result.reason}", err=True)
            else:
                predictions.append(result)
    if as_json:
        document = {
            "bundle": str(classifier.bundle.root),
            "quantization": classifier.bundle.quantization,
            "predictions": [p.to_dict() for p in predictions],
            "skipped": [s.to_dict() for s in skipped],
        }
        click.echo(json.dumps(document, indent=2))
    else:
        _print_table(predictions)
    if not predictions:
        reason = f": {skipped[0].reason}" if len(skipped) == 1 else f" ({len(skipped)} files skipped)"
        raise RuntimeLiteshipError(f"{image_or_dir}: no image could be classified{reason}")


def _print_table(predictions) -> None:
    if not predictions:
        return
    width = max(len(t.label) for p in predictions for t in p.top)
    for prediction in predictions:
        click.echo(prediction.source)
        for rank, top in enumerate(prediction.top, 1):
            click.echo(f"  {rank:>2}  {top.label:<{width}}  {top.score:8.4f}")


@click.command("bit")
@click.argument("bundle", type=click.Path(exists=True))
@click.argument("labeled_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--reference", type=click.Path(exists=True), default=None,
              help="A second bundle (e.g. the fp32 one) to compare top-1 agreement and accuracy with.")
@click.option("--device", "device", default=None, metavar="TARGET",
              help="Run the evaluation on this device (ssh:..., adb:...) with its runtime (it needs Pillow there); "
                   "the bundle, the images and a reference bundle are pushed. Default: this host.")
@click.option("--python", "python", default=None, help="With --device: the device's Python (default python3).")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@click.option("--threads", type=Threads(), default=None, help="Interpreter threads.")
@click.option("--backend", default="auto", show_default=True, help="Interpreter backend.")
def eval_command(bundle, labeled_dir, reference, device, python, as_json, threads, backend):
    """Accuracy of BUNDLE on LABELED_DIR, a folder of class folders.

    Images sit in LABELED_DIR/<label>/, each folder named by one of the bundle's labels.

    With --reference, also the top-1 agreement with the reference bundle and the accuracy change.
    """
    from liteship.runtime.classify import evaluate
    from liteship.runtime.images import iter_files

    if device and device != "local":
        from liteship.device.remote_eval import eval_on_device

        result = eval_on_device(device, "bit", bundle, labeled_dir, reference=reference, threads=threads,
                                python=python, progress=lambda message: click.echo(message, err=True))
    else:
        total = sum(len(iter_files(p)) for p in _class_dirs(labeled_dir)) * (2 if reference else 1)
        with click.progressbar(length=total, label="evaluating", file=sys.stderr) as bar:
            result = evaluate(bundle, labeled_dir, reference_bundle=reference, threads=threads, backend=backend,
                              progress=lambda _: bar.update(1))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for skip in result["skipped"]:
        click.echo(f"skipped {skip['reason']}", err=True)
    click.echo(f"bundle      {result['bundle']} ({result['quantization']})"
               + (f" on {result['target']}" if result.get("target") else ""))
    click.echo(f"images      {result['images']} ({len(result['skipped'])} skipped)")
    click.echo(f"accuracy    {_percent(result['accuracy'])}  (top-5 {_percent(result['top5_accuracy'])})")
    if "reference" in result:
        ref = result["reference"]
        change = ref["accuracy_change"]
        click.echo(f"reference   {ref['bundle']} ({ref['quantization']}): accuracy {_percent(ref['accuracy'])}")
        click.echo(f"agreement   {_percent(ref['top1_agreement'])} top-1 on {ref['compared']} images")
        click.echo(f"change      {'n/a' if change is None else f'{100 * change:+.2f} points'}")
    click.echo("per class:")
    width = max(len(name) for name in result["per_class"])
    for name, counts in result["per_class"].items():
        click.echo(f"  {name:<{width}}  {counts['correct']:>5}/{counts['images']:<5}  {_percent(counts['accuracy'])}")


def _class_dirs(labeled_dir):
    return [p for p in sorted(Path(labeled_dir).iterdir()) if p.is_dir() and not p.name.startswith(".")]


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"
