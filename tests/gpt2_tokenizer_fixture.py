"""A GPT-2-style byte-level BPE tokenizer trained in a fraction of a second on text that ships with Python.

Tests must not download GPT-2's real vocabulary, so this trains one with Hugging Face ``tokenizers`` (installed with
transformers) using GPT-2's exact pipeline: the ByteLevel pre-tokenizer (GPT-2's regex), all 256 byte symbols in the
alphabet, and the ByteLevel decoder. The files look like GPT-2's own: ``<|endoftext|>`` is the last id of vocab.json.

    from tests.gpt2_tokenizer_fixture import make_tokenizer_files
    paths = make_tokenizer_files(tmp_path, vocab_size=1000)
    paths["vocab"], paths["merges"], paths["tokenizer_json"], paths["added_tokens"]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

EOS_TOKEN = "<|endoftext|>"


def pydoc_texts() -> list[str]:
    """The documents of pydoc_data.topics (~465k characters of Python's own documentation), sorted by topic."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def make_tokenizer_files(directory, vocab_size: int = 1000, *, texts: Iterable[str] | None = None,
                         added_tokens: Iterable = (), min_frequency: int = 2) -> dict[str, Path]:
    """Train a byte-level BPE and save it as GPT-2 checkpoint files; returns their paths by bundle asset role.

    ``vocab_size`` counts the 256 byte symbols and the merges; ``<|endoftext|>`` then takes id ``vocab_size``
    (in vocab.json, as GPT-2 has it) and each of ``added_tokens`` (a content string, or a dict of
    ``tokenizers.AddedToken`` keyword arguments with ``"content"``) the ids after it.

    Returned keys: ``vocab`` (vocab.json), ``merges`` (merges.txt), ``tokenizer_json`` (tokenizer.json with the
    added tokens and their flags), ``added_tokens`` (Hugging Face's added_tokens.json, ``{content: id}``, without
    ``<|endoftext|>``), ``dir``.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts) if texts is not None else pydoc_texts(), trainer)
    n_model = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=False)])
    extra = [AddedToken(**t) if isinstance(t, dict) else AddedToken(t, special=False) for t in added_tokens]
    if extra:
        tok.add_tokens(extra)

    spec = json.loads(tok.to_str())
    spec["model"]["vocab"][EOS_TOKEN] = n_model  # GPT-2 keeps <|endoftext|> in its vocab.json too
    paths = {"dir": directory, "vocab": directory / "vocab.json", "merges": directory / "merges.txt",
             "tokenizer_json": directory / "tokenizer.json", "added_tokens": directory / "added_tokens.json"}
    paths["tokenizer_json"].write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    paths["vocab"].write_text(json.dumps(spec["model"]["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    paths["merges"].write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    added = {t["content"]: t["id"] for t in spec["added_tokens"] if t["content"] != EOS_TOKEN}
    paths["added_tokens"].write_text(json.dumps(added, ensure_ascii=False), encoding="utf-8")
    return paths
