"""`liteship convert bit`: a BiT checkpoint to a TFLite image-classifier bundle."""

from __future__ import annotations

import time

import click

from liteship.convert.bit.config import PRESETS
from liteship.convert.cli import min_runtime_option
from liteship.options import POSITIVE_INT


@click.command("bit")
@click.argument("source", type=click.Path(exists=False, path_type=str))
@click.option("--out", "-o", "--output", "out_dir", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Bundle folder to write, replaced atomically if it is already a bundle (default: SOURCE-MODE in "
                   "the current folder).")
@click.option("--variant", default="R50x1", show_default=True,
              help=f"Architecture: {', '.join(PRESETS)} (BiT-M-/BiT-S- prefixes accepted).")
@click.option("--quant", type=click.Choice(["fp32", "fp16", "dynamic-int8", "int8"]), default="fp32",
              show_default=True, help="Quantization mode (int8 needs --calibration).")
@click.option("--calibration", type=click.Path(exists=True, path_type=str), default=None,
              help="Folder of your own images (or .npy arrays) to calibrate int8 on.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=str), default=None,
              help="Text file with one class name per line, as many as the head has classes.")
@click.option("--image-size", type=POSITIVE_INT, default=None, help="Input resolution (square). Default 224.")
@click.option("--io-type", type=click.Choice(["float32", "int8", "uint8"]), default="float32", show_default=True,
              help="Model input/output type; int8/uint8 need --quant int8 (Edge TPU wants them).")
@click.option("--input-range", type=click.Choice(["-1,1", "0,1"]), default=None,
              help="Input convention; default [-1, 1] for .npz, detected for a SavedModel.")
@click.option("--calibration-limit", type=POSITIVE_INT, default=200, show_default=True,
              help="Use at most this many calibration images.")
@click.option("--groupnorm", type=click.Choice(["channelmean", "matmul", "reshape"]), default="channelmean",
              show_default=True, help="GroupNorm lowering, for comparisons (docs/bit_groupnorm.md).")
@min_runtime_option
def bit(source, out_dir, variant, quant, calibration, labels, image_size, io_type, input_range,
        calibration_limit, groupnorm, min_runtime):
    """Convert a BiT checkpoint (BiT-M/BiT-S .npz or a TF Hub-style SavedModel folder) to a bundle.

    The network is rebuilt in tf_keras with weight standardization baked into the kernels and GroupNorm lowered to
    ops XNNPACK runs; the bundle records size, resize and normalization so the runtime never guesses.
    """
    from pathlib import Path

    from liteship.convert.bit.export import export_bit
    from liteship.convert.bundle import check_out_dir
    from liteship.convert.cli import default_out, progress, summary
    from liteship.convert.quant import Quant

    if out_dir is None:
        out_dir = str(default_out(Path(source), Quant.parse(quant)))
    check_out_dir(out_dir)

    started = time.perf_counter()
    out = export_bit(source, out_dir, variant=variant, quant=quant, calibration=calibration, labels=labels,
                     image_size=image_size, io_type=io_type, input_range=input_range,
                     calibration_limit=calibration_limit, groupnorm=groupnorm, min_runtime=min_runtime,
                     progress=progress)
    summary(out, quant=quant, seconds=time.perf_counter() - started)


command = bit
