"""`liteship run gpt2`: generate text from a GPT-2 bundle, streamed token by token to stdout."""

from __future__ import annotations

import json
import sys

import click

from liteship.options import NON_NEGATIVE_INT, POSITIVE_INT, PROBABILITY, SEED, TEMPERATURE, UTF8_TEXT, Threads


@click.command("gpt2")
@click.argument("bundle", type=click.Path(exists=True, path_type=str))
@click.option("--prompt", required=True, type=UTF8_TEXT, help="Text to continue.")
@click.option("--max-new-tokens", type=POSITIVE_INT, default=None, help="[default: the bundle's generation config]")
@click.option("--temperature", type=TEMPERATURE, default=None, help="0 = greedy [default: the bundle's].")
@click.option("--top-k", type=NON_NEGATIVE_INT, default=None, help="Sample among the k likeliest tokens (0 = all).")
@click.option("--top-p", type=PROBABILITY, default=None, help="Sample among the likeliest tokens reaching mass p.")
@click.option("--seed", type=SEED, default=None, help="Random seed for sampling.")
@click.option("--stop", multiple=True, type=UTF8_TEXT, help="Stop before this text (repeatable).")
@click.option("--threads", type=Threads(), default=None, help="Interpreter threads [default: up to 4 cores].")
@click.option("--truncate", is_flag=True, help="Keep the end of a prompt longer than the context instead of failing.")
@click.option("--full-cache", is_flag=True,
              help="Attend over all max_context cache slots from the first token: the same step time at every "
                   "position, that of the longest text (default: the cache grows with the text).")
@click.option("--stats", is_flag=True, help="Print prefill/decode speed to stderr at the end.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object at the end (text, token ids, why it stopped, timings) instead of streaming.")
def command(bundle, prompt, max_new_tokens, temperature, top_k, top_p, seed, stop, threads, truncate, full_cache,
            stats, as_json):
    """Continue PROMPT with the GPT-2 BUNDLE, printing tokens as they are generated."""
    from liteship.runtime.generate import TextGenerator

    gen = TextGenerator(bundle, threads=threads, grow_cache=False if full_cache else None)

    def emit(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = gen.generate(prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                          stop=stop, stream=None if as_json else emit, truncate=truncate)
    if as_json:
        click.echo(json.dumps({"prompt": prompt, "text": result.text, "token_ids": [int(t) for t in result.token_ids],
                               "prompt_tokens": result.prompt_tokens, "finish_reason": result.finish_reason,
                               "prefill_seconds": result.prefill_seconds, "decode_seconds": result.decode_seconds,
                               "kv_cache": gen.session.cache_description()}))
    else:
        sys.stdout.write("\n")
    if stats:
        n = len(result.token_ids)
        click.echo(f"{result.prompt_tokens} prompt tokens in {result.prefill_seconds:.3f} s, {n} new tokens in "
                   f"{result.decode_seconds:.3f} s ({max(n - 1, 0) / max(result.decode_seconds, 1e-9):.1f} tok/s), "
                   f"stopped: {result.finish_reason}; KV cache: {gen.session.cache_description()}", err=True)


@click.command("gpt2")
@click.argument("bundle", type=click.Path(exists=True, path_type=str))
@click.argument("text_file", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--reference", type=click.Path(exists=True, path_type=str), default=None,
              help="A second bundle (e.g. the fp32 one) or the GPT-2 checkpoint folder it came from: adds its "
                   "perplexity, greedy next-token agreement and mean KL divergence.")
@click.option("--device", "device", default=None, metavar="TARGET",
              help="Run the evaluation on this device (ssh:..., adb:...) with its runtime; the bundle, the text and "
                   "a reference bundle are pushed there. Default: this host.")
@click.option("--python", "python", default=None, help="With --device: the device's Python (default python3).")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@click.option("--threads", type=Threads(), default=None, help="Interpreter threads.")
@click.option("--backend", default="auto", show_default=True, help="Interpreter backend.")
def eval_command(bundle, text_file, reference, device, python, as_json, threads, backend):
    """Perplexity of the GPT-2 BUNDLE over TEXT_FILE (UTF-8), in windows of the bundle's context.

    Each window runs through prefill with the KV cache carried from chunk to chunk; a window starts at the
    previous one's last token, so every token after the first is predicted once. Progress goes to stderr.
    """
    from liteship.runtime.text_eval import evaluate_text

    bar = None

    def start(n: int) -> None:
        nonlocal bar
        bar = click.progressbar(length=n, label="evaluating", file=sys.stderr)
        bar.__enter__()

    if device and device != "local":
        from liteship.device.remote_eval import eval_on_device

        result = eval_on_device(device, "gpt2", bundle, text_file, reference=reference, threads=threads,
                                python=python, progress=lambda message: click.echo(message, err=True))
    else:
        try:
            result = evaluate_text(bundle, text_file, reference=reference, threads=threads, backend=backend,
                                   on_windows=start, progress=lambda n: bar.update(n))
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"bundle       {result['bundle']} ({result['quantization']})"
               + (f" on {result['target']}" if result.get("target") else ""))
    click.echo(f"text         {result['text']}: {result['tokens']} tokens, {result['windows']} window(s) of "
               f"{result['context']}")
    click.echo(f"perplexity   {result['perplexity']:.4f}  (mean NLL {result['nll']:.4f} over {result['predicted']} "
               "predicted tokens)")
    ref = result.get("reference")
    if ref:
        click.echo(f"reference    {ref['source']}: perplexity {ref['perplexity']:.4f} "
                   f"({ref['perplexity_change_pct']:+.3f}% for the bundle)")
        click.echo(f"agreement    {100 * ref['top1_agreement']:.2f}% greedy next token")
        click.echo(f"mean KL      {ref['mean_kl']:.6f} nats (reference || bundle)")
