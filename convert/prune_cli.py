"""`liteship prune bit|gpt2` and `liteship qat bit`: a checkpoint -> a pruned (or QAT-tuned) checkpoint of the same
format, then `liteship convert` as usual (the bundle manifest's conversion.pruning records what was done)."""

from __future__ import annotations

import click

from liteship.convert.cli import progress
from liteship.convert.quant import Quant
from liteship.options import NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, SEED, Number

SPARSITY = Number(float, min=0, max=1, open_max=True)  # a fraction removed: all of it would leave no model


def common_options(fn):
    options = [
        click.option("--out", "-o", "--output", "out", required=True, type=click.Path(path_type=str),
                     help="Where to write the pruned checkpoint (written whole or not at all)."),
        click.option("--data", required=True, type=click.Path(path_type=str),
                     help="Fine-tuning data: BiT an image folder with one sub-folder per class, GPT-2 a text file."),
        click.option("--steps", type=NON_NEGATIVE_INT, default=100, show_default=True, help="Fine-tuning steps."),
        click.option("--learning-rate", type=POSITIVE_FLOAT, default=1e-4, show_default=True),
        click.option("--batch-size", type=POSITIVE_INT, default=16, show_default=True),
        click.option("--quant", type=click.Choice([q.value for q in Quant]), default=None,
                     help="Quantization the before/after .tflite size and quality are measured in "
                          "[default: fp32; qat: int8]."),
        click.option("--no-convert", is_flag=True,
                     help="Skip the before/after conversions (no .tflite sizes, no after-conversion figure)."),
        click.option("--seed", type=SEED, default=0, show_default=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def prune_options(fn):
    options = [
        click.option("--method", type=click.Choice(["structured", "magnitude"]), default="magnitude",
                     show_default=True,
                     help="structured: remove whole channels/neurons (smaller, faster on any delegate); magnitude: "
                          "zero the smallest weights (smaller when compressed; faster only with sparse kernels)."),
        click.option("--sparsity", type=SPARSITY, default=0.5, show_default=True,
                     help="Fraction removed: of the units (structured) or of the weights (magnitude)."),
        click.option("--structured", "m_by_n", default=None, metavar="M:N",
                     help="Magnitude pruning in TFMOT's M-by-N pattern (2:4: two zeros in every four weights)."),
        click.option("--prune-embeddings", is_flag=True,
                     help="Magnitude: also prune GPT-2's token/position tables (wte is the LM head) or BiT's stem "
                          "conv and head; by default they stay dense."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def bit_options(fn):
    from liteship.convert.bit.config import PRESETS

    options = [
        click.option("--variant", default="R50x1", show_default=True, help=f"Architecture: {', '.join(PRESETS)}."),
        click.option("--image-size", type=POSITIVE_INT, default=None, help="Training/evaluation resolution. Default 224."),
        click.option("--input-range", type=click.Choice(["-1,1", "0,1"]), default=None,
                     help="Input convention; default [-1, 1] for .npz, detected for a SavedModel."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _options(**kw):
    from liteship.convert.prune import PruneOptions, parse_m_by_n

    m_by_n = parse_m_by_n(kw.pop("m_by_n", None))
    if m_by_n:
        kw["method"] = "magnitude"
    return PruneOptions(m_by_n=m_by_n, **kw)


@click.command("bit")
@click.argument("source", type=click.Path(path_type=str))
@common_options
@prune_options
@bit_options
@click.option("--qat", is_flag=True, help="Fine-tune quantization-aware (TFMOT quantize_model) for int8.")
@click.option("--allocation", type=click.Choice(["uniform", "global"]), default="uniform", show_default=True,
              help="Structured: which bottleneck channels make up --sparsity. uniform: that fraction of every "
                   "unit; global: one ranking over all units, importance per multiply-accumulate a channel costs "
                   "(narrows the high-resolution early blocks first).")
def prune_bit_command(source, out, data, steps, learning_rate, batch_size, quant, no_convert, seed, method,
                      sparsity, m_by_n, prune_embeddings, variant, image_size, input_range, qat, allocation):
    """Prune a BiT checkpoint (.npz or SavedModel folder), fine-tune it on your images; writes a BiT .npz."""
    from liteship.convert.bit.prune import prune_bit

    options = _options(method=method, sparsity=sparsity, m_by_n=m_by_n, steps=steps, learning_rate=learning_rate,
                       batch_size=batch_size, prune_embeddings=prune_embeddings, qat=qat, quant=quant or "fp32",
                       seed=seed, allocation=allocation)
    prune_bit(source, out, data, options, variant=variant, image_size=image_size, input_range=input_range,
              convert=not no_convert, progress=progress)
    click.echo(out)


@click.command("gpt2")
@click.argument("source", type=click.Path(path_type=str))
@common_options
@prune_options
@click.option("--context", type=POSITIVE_INT, default=None,
              help="Training/evaluation window in tokens [default: 128, at most the model's n_positions].")
def prune_gpt2_command(source, out, data, steps, learning_rate, batch_size, quant, no_convert, seed, method,
                       sparsity, m_by_n, prune_embeddings, context):
    """Prune a GPT-2 checkpoint folder and fine-tune it on your text file; writes a Hugging Face GPT-2 folder."""
    from liteship.convert.gpt2.prune import prune_gpt2

    options = _options(method=method, sparsity=sparsity, m_by_n=m_by_n, steps=steps, learning_rate=learning_rate,
                       batch_size=batch_size, prune_embeddings=prune_embeddings, quant=quant or "fp32", seed=seed)
    prune_gpt2(source, out, data, options, context=context, convert=not no_convert, progress=progress)
    click.echo(out)


@click.command("bit")
@click.argument("source", type=click.Path(path_type=str))
@common_options
@bit_options
def qat_bit_command(source, out, data, steps, learning_rate, batch_size, quant, no_convert, seed, variant,
                    image_size, input_range):
    """Quantization-aware fine-tuning (TFMOT quantize_model, learned activation ranges) of a BiT checkpoint on
    your images, for when post-training int8 loses too much; writes a BiT .npz that carries the ranges, to convert
    with --quant int8 (which uses them instead of calibrating those tensors)."""
    from liteship.convert.bit.prune import prune_bit
    from liteship.convert.prune import PruneOptions

    options = PruneOptions(method="none", sparsity=0.0, steps=steps, learning_rate=learning_rate,
                           batch_size=batch_size, qat=True, quant=quant or "int8", seed=seed)
    prune_bit(source, out, data, options, variant=variant, image_size=image_size, input_range=input_range,
              convert=not no_convert, progress=progress)
    click.echo(out)
