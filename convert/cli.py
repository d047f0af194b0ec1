"""`liteship convert savedmodel|keras`: any SavedModel or Keras classifier -> bundle."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from liteship.convert.quant import CLASSIFIER_MODES, SUFFIXES, Quant
from liteship.errors import ConvertError
from liteship.options import POSITIVE_FLOAT, MultiValueCommand, Number
from liteship.runtime.files import read_text

QUANT_CHOICES = [q.value for q in CLASSIFIER_MODES]


def progress(message: str, *, stage: bool = True) -> None:
    """A converter's stage (on a terminal, redrawn with its elapsed time until the next) or, with
    ``stage=False``, a plain line. One liteship.progress.Stages per stderr (click's test runner swaps it)."""
    global _STAGES
    from liteship.progress import Stages

    if _STAGES is None or _STAGES.stream is not sys.stderr:
        _STAGES = Stages()
    _STAGES(message, stage=stage)


_STAGES = None


def summary(out, *, quant: str, seconds: float) -> None:
    """The line every converter ends with (stderr): where, how big, which mode, how long, peak RSS; and the bundle
    path alone on stdout, for scripts."""
    from liteship.runtime.memory import peak_rss_bytes
    from liteship.units import memory_text, size_text

    model = Path(out) / "model.tflite"
    size = size_text(model.stat().st_size) if model.is_file() else "?"
    rss = peak_rss_bytes()
    progress(f"wrote {out}: {size} model, {quant}, {seconds:.1f} s, "
             f"peak RSS {memory_text(rss) if rss else 'unknown'}", stage=False)
    click.echo(str(out))


def calibration_meter():
    """A progress callback for representative_dataset: count, rate, ETA of the calibration samples."""
    from liteship.progress import Meter

    meter = None

    def update(done: int, total: int) -> None:
        nonlocal meter
        meter = meter or Meter("calibrating", total, unit="samples")
        meter(done)

    return update


def default_out(source: Path, quant: Quant) -> Path:
    return Path(f"{source.stem or source.name}-{SUFFIXES[quant]}")


def image_preprocessing(input_spec: dict, mean: tuple[float, ...], std: tuple[float, ...]) -> dict:
    """The preprocessing block for an NHWC image input, or {} for any other input."""
    shape = input_spec.get("shape") or []
    if len(shape) != 4 or shape[-1] not in (1, 3) or min(shape[1:3]) <= 0:
        return {}
    channels = shape[-1]
    mean = tuple(mean) * (3 // len(mean)) if len(mean) in (1, 3) else None
    std = tuple(std) * (3 // len(std)) if len(std) in (1, 3) else None
    if mean is None or std is None:
        raise ConvertError("--mean and --std take 1 or 3 values")
    lo, hi = (0 - mean[0]) / std[0], (1 - mean[0]) / std[0]
    return {"image_size": [int(shape[1]), int(shape[2])], "resize": "bilinear", "crop": "none",
            "mean": list(mean), "std": list(std), "input_range": [lo, hi],
            "channels": "RGB" if channels == 3 else "L", "layout": "NHWC"}


def read_labels(path: Path) -> list[str]:
    """One class name per line (blank lines skipped), UTF-8 text; raises ConvertError naming the file."""
    text = read_text(path, what="--labels", error=ConvertError, hint="give one label per line")
    if "\0" in text:
        raise ConvertError(f"--labels {path}: a binary file, not one label per line")
    return [line.strip() for line in text.splitlines() if line.strip()]


def convert_to_bundle(saved_model: Path, *, source: Path, out: Path, quant: Quant, calibration: Path | None,
                      io_type: str, allow_tf_ops: bool, labels: Path | None, signature: str | None,
                      mean: tuple[float, ...], std: tuple[float, ...], family: str = "classifier",
                      min_runtime: str | None = None) -> Path:
    """SavedModel -> bundle, with progress on stderr. Shared by the savedmodel and keras commands."""
    from liteship.convert.bundle import check_out_dir, hash_source, write_bundle
    from liteship.convert.calibration import representative_dataset
    from liteship.convert.tflite import convert_saved_model, saved_model_signature

    check_out_dir(out)
    label_list = read_labels(labels) if labels is not None else None
    key, input_spec = saved_model_signature(saved_model, signature)
    classes = input_spec.pop("output_classes", None) if input_spec else None
    if label_list is not None and classes is not None and len(label_list) != classes:
        raise ConvertError(f"--labels {labels}: {len(label_list)} labels, but the model has {classes} classes")
    preprocessing = image_preprocessing(input_spec, mean, std) if input_spec else {}
    rep = None
    if quant.needs_calibration:
        if calibration is None:
            raise ConvertError(f"--quant {quant.value} needs --calibration DIR_or_NPY (liteship never calibrates "
                               "on random data)")
        if not input_spec:
            raise ConvertError("full-integer calibration supports models with exactly one input")
        def decode_image(path):
            from liteship.runtime.images import preprocess

            return preprocess(path, preprocessing)

        rep = representative_dataset(calibration, input_spec, preprocess=decode_image if preprocessing else None,
                                     progress=calibration_meter())
        progress(f"calibrating on {rep.num_samples} samples from {calibration}")
    elif calibration is not None:
        progress(f"note: --calibration is ignored for --quant {quant.value}", stage=False)
    assets = {}
    if label_list is not None:
        assets["labels"] = ("assets/labels.txt", ("\n".join(label_list) + "\n").encode())
    progress(f"converting {source} ({quant.value}, signature {key})")
    data, report = convert_saved_model(saved_model, quant, signature_keys=[key], representative_dataset=rep,
                                       io_type=io_type, allow_tf_ops=allow_tf_ops, min_runtime=min_runtime)
    progress(f"converted in {report['seconds']:.1f} s, ops "
             + ", ".join(f"{k} x{v}" for k, v in report["op_counts"].items()), stage=False)
    config = {"num_labels": len(label_list) if label_list else None}
    return write_bundle(
        out, data, family=family, task="classification" if not preprocessing else "image-classification",
        quantization=quant, io_type=io_type, preprocessing=preprocessing, config=config, assets=assets,
        source={"path": str(source), "sha256": hash_source(source), "format": "savedmodel" if source.is_dir()
                else source.suffix.lstrip(".")},
        conversion=dict(report, calibration_samples=getattr(rep, "num_samples", None)),
    )


def _check_min_runtime(ctx, param, value):
    from liteship.convert.quant import MIN_RUNTIME_PATTERN

    if value is not None and not MIN_RUNTIME_PATTERN.fullmatch(value.strip()):
        raise click.BadParameter(f"{value!r} is not a TFLite runtime version such as 2.14", ctx, param)
    return value.strip() if value is not None else None


def min_runtime_option(fn):
    """--min-runtime for every convert command (convert/quant.py holds what it changes)."""
    return click.option(
        "--min-runtime", metavar="VERSION", default=None, callback=_check_min_runtime,
        help="Oldest TFLite runtime the bundle must load on, e.g. 2.14 (tflite-runtime 2.14, 32-bit ARM boards): "
             "convert with op versions it has, or refuse.")(fn)


def common_options(fn):
    options = [
        click.option("--quant", "quant", type=click.Choice(QUANT_CHOICES), default="fp32", show_default=True,
                     help="Quantization mode."),
        click.option("--out", "-o", "--output", "out", type=click.Path(path_type=Path), default=None,
                     help="Bundle folder to write (default: SOURCE-MODE in the current folder)."),
        click.option("--calibration", type=click.Path(path_type=Path), default=None,
                     help="Folder of images or .npy/.npz arrays for int8/int8x16 calibration."),
        click.option("--io-type", type=click.Choice(["float32", "int8", "uint8", "int16"]), default="float32",
                     show_default=True, help="Model input/output type (int8/uint8 for Edge TPU)."),
        click.option("--allow-tf-ops", is_flag=True,
                     help="Keep ops with no TFLite builtin as Flex ops (the device then needs the Flex delegate)."),
        click.option("--labels", type=click.Path(path_type=Path), default=None, help="Labels, one per line."),
        click.option("--signature", default=None, help="SavedModel signature to convert (default serving_default)."),
        click.option("--mean", type=Number(float), multiple=True, default=(0.0,), show_default=True,
                     help="Image inputs: normalized = (pixel/255 - mean) / std; 1 or 3 values."),
        click.option("--std", type=POSITIVE_FLOAT, multiple=True, default=(1.0,), show_default=True,
                     help="1 or 3 values, each > 0."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return min_runtime_option(fn)


@click.command(cls=MultiValueCommand)
@click.argument("path", type=click.Path(path_type=Path))
@common_options
def savedmodel(path: Path, quant, out, calibration, io_type, allow_tf_ops, labels, signature, mean, std,
               min_runtime) -> None:
    """Convert a SavedModel folder to a bundle."""
    from liteship.convert.tflite import check_saved_model

    started = time.perf_counter()
    check_saved_model(path)
    q = Quant.parse(quant)
    result = convert_to_bundle(path, source=path, out=out or default_out(path, q), quant=q,
                               calibration=calibration, io_type=io_type, allow_tf_ops=allow_tf_ops,
                               labels=labels, signature=signature, mean=mean, std=std, min_runtime=min_runtime)
    summary(result, quant=q.value, seconds=time.perf_counter() - started)


@click.command(cls=MultiValueCommand)
@click.argument("path", type=click.Path(path_type=Path))
@common_options
def keras(path: Path, quant, out, calibration, io_type, allow_tf_ops, labels, signature, mean, std,
          min_runtime) -> None:
    """Convert a Keras model file (.keras, .h5) to a bundle."""
    from liteship.convert.bundle import check_out_dir
    from liteship.convert.tflite import keras_as_saved_model

    started = time.perf_counter()
    q = Quant.parse(quant)
    if not path.exists():
        raise ConvertError(f"{path} does not exist")
    check_out_dir(out or default_out(path, q))
    if labels is not None:
        read_labels(labels)
    progress(f"loading {path}")
    with keras_as_saved_model(path) as saved_model:
        result = convert_to_bundle(saved_model, source=path, out=out or default_out(path, q), quant=q,
                                   calibration=calibration, io_type=io_type, allow_tf_ops=allow_tf_ops,
                                   labels=labels, signature=signature, mean=mean, std=std,
                                   min_runtime=min_runtime)
    summary(result, quant=q.value, seconds=time.perf_counter() - started)
