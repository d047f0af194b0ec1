"""`liteship convert gpt2`: a Hugging Face GPT-2 checkpoint folder -> a text-generation bundle."""

from __future__ import annotations

import click

from liteship.convert.cli import min_runtime_option
from liteship.options import POSITIVE_INT


@click.command("gpt2")
@click.argument("checkpoint_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", "-o", "--output", "out_dir", type=click.Path(path_type=str), default=None,
              help="Bundle folder to write (default: CHECKPOINT_DIR-MODE in the current folder).")
@click.option("--quant", type=click.Choice(["fp32", "fp16", "dynamic-int8", "int4"]), default="fp32",
              show_default=True, help="Quantization mode.")
@click.option("--max-context", type=POSITIVE_INT, default=None,
              help="Longest sequence (prompt + generated) the bundle can hold [default: the model's n_positions].")
@click.option("--prefill-len", type=POSITIVE_INT, default=None,
              help="Prompt tokens processed per prefill call [default: 128, at most --max-context].")
@click.option("--kv-cache", type=click.Choice(["float32", "int8"]), default="float32", show_default=True,
              help="How the runtime stores the KV cache. int8: a quarter of the bytes, one scale per layer fixed "
                   "from --kv-calibration text (GPT-2 124M dynamic-int8 at 896 tokens: peak RSS 221 MiB against "
                   "261; see docs/gpt2_kv_cache.md).")
@click.option("--kv-calibration", type=click.Path(path_type=str), default=None,
              help="Text like the model's (a UTF-8 .txt file or a folder of them) that fixes the int8 cache's "
                   "scales; needed with --kv-cache int8.")
@click.option("--kv-equalize/--no-kv-equalize", default=None,
              help="With --kv-cache int8: first even out K's and V's channels by factors folded into the attention "
                   "weights (exact in float), so that the cache's one scale per tensor serves outlier channels and "
                   "the rest alike [default: on].")
@min_runtime_option
def command(checkpoint_dir, out_dir, quant, max_context, prefill_len, kv_cache, kv_calibration, kv_equalize,
            min_runtime):
    """Convert a GPT-2 checkpoint (config.json, model.safetensors / pytorch_model.bin / tf_model.h5, tokenizer
    files) to a bundle with `prefill` and `decode` signatures and a runtime-owned KV cache."""
    from pathlib import Path

    from liteship.convert.bundle import check_out_dir
    from liteship.convert.cli import default_out, progress, summary
    from liteship.convert.gpt2.export import export
    from liteship.convert.quant import Quant, check_min_runtime

    check_min_runtime(quant, min_runtime)  # before the checkpoint is read
    if kv_cache == "int8" and kv_calibration is None:
        raise click.UsageError("--kv-cache int8 needs --kv-calibration (text that fixes the cache's scales)")
    if kv_calibration is not None and kv_cache != "int8":
        raise click.UsageError("--kv-calibration is for --kv-cache int8")
    if kv_equalize is not None and kv_cache != "int8":
        raise click.UsageError("--kv-equalize / --no-kv-equalize is for --kv-cache int8")
    if out_dir is None:
        out_dir = str(default_out(Path(checkpoint_dir), Quant.parse(quant)))
    check_out_dir(out_dir)
    check_tokenizer(checkpoint_dir)
    report = export(checkpoint_dir, out_dir, quant=quant, max_context=max_context, prefill_len=prefill_len,
                    min_runtime=min_runtime, progress=progress, kv_cache=kv_cache, kv_calibration=kv_calibration,
                    kv_equalize=kv_equalize is not False)
    summary(report.bundle, quant=report.quantization, seconds=report.seconds)


def check_tokenizer(checkpoint_dir) -> None:
    """Builds the runtime's own tokenizer from the checkpoint's files, so a corrupt vocab.json or merges.txt fails
    here, naming the file, and not later on the device."""
    from pathlib import Path

    from liteship.convert.gpt2.export import runtime_tokenizer, tokenizer_assets
    from liteship.errors import BundleError, ConvertError

    ckpt = Path(checkpoint_dir)
    if not ckpt.is_dir():
        raise ConvertError(f"{ckpt}: no such checkpoint folder")
    assets = tokenizer_assets(ckpt)
    try:
        runtime_tokenizer(ckpt, assets)
    except BundleError as exc:
        raise ConvertError(f"{ckpt}: tokenizer: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        names = ", ".join(str(src.name) for _, src in assets.values())
        raise ConvertError(f"{ckpt}: tokenizer files ({names}) are not a GPT-2 byte-level BPE ({exc!r:.80})") from None
