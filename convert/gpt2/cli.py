"""`liteship convert gpt2`: a Hugging Face GPT-2 checkpoint folder -> a text-generation bundle."""

from __future__ import annotations

import click

from liteship.options import POSITIVE_INT


@click.command("gpt2")
@click.argument("checkpoint_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=str), help="Bundle folder to write.")
@click.option("--quant", default="fp32", show_default=True, help="fp32, fp16 or dynamic-int8.")
@click.option("--max-context", type=POSITIVE_INT, default=None,
              help="Longest sequence (prompt + generated) the bundle can hold [default: the model's n_positions].")
@click.option("--prefill-len", type=POSITIVE_INT, default=None,
              help="Prompt tokens processed per prefill call [default: 128, at most --max-context].")
def command(checkpoint_dir, out_dir, quant, max_context, prefill_len):
    """Convert a GPT-2 checkpoint (config.json, model.safetensors / pytorch_model.bin / tf_model.h5, tokenizer
    files) to a bundle with `prefill` and `decode` signatures and a runtime-owned KV cache."""
    from liteship.convert.gpt2.export import export

    report = export(checkpoint_dir, out_dir, quant=quant, max_context=max_context, prefill_len=prefill_len,
                    progress=lambda msg: click.echo(msg, err=True))
    click.echo(f"wrote {report.bundle} ({report.tflite_bytes / 1e6:.1f} MB model, {report.quantization}) in "
               f"{report.seconds:.1f} s, peak RSS {report.peak_rss_bytes / 2**20:.0f} MiB")
