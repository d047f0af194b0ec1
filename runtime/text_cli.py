"""`liteship run gpt2`: generate text from a GPT-2 bundle, streamed token by token to stdout."""

from __future__ import annotations

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
def command(bundle, prompt, max_new_tokens, temperature, top_k, top_p, seed, stop, threads, truncate, full_cache,
            stats):
    """Continue PROMPT with the GPT-2 BUNDLE, printing tokens as they are generated."""
    from liteship.runtime.generate import TextGenerator

    gen = TextGenerator(bundle, threads=threads, grow_cache=False if full_cache else None)

    def emit(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = gen.generate(prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                          stop=stop, stream=emit, truncate=truncate)
    sys.stdout.write("\n")
    if stats:
        n = len(result.token_ids)
        click.echo(f"{result.prompt_tokens} prompt tokens in {result.prefill_seconds:.3f} s, {n} new tokens in "
                   f"{result.decode_seconds:.3f} s ({max(n - 1, 0) / max(result.decode_seconds, 1e-9):.1f} tok/s), "
                   f"stopped: {result.finish_reason}; KV cache: {gen.session.cache_description()}", err=True)
