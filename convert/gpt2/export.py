"""Hugging Face GPT-2 checkpoint folder -> liteship bundle with `prefill` and `decode` signatures.

checkpoint -> strict weight load (weights.py) -> TF module with variables (model.py) -> SavedModel in a temporary
folder -> TFLiteConverter.from_saved_model(signature_keys=[prefill, decode]) -> quantization recipe -> bundle with
the tokenizer files, special tokens, context length and generation defaults.
"""

from __future__ import annotations

import gc
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liteship.convert.gpt2.config import GPT2Config
from liteship.convert.quant import Quant
from liteship.errors import ConvertError, RuntimeLiteshipError
from liteship.runtime.files import read_json, require, work_dir
from liteship.runtime.memory import peak_rss_bytes

SIGNATURES = ("prefill", "decode")
GPT2_QUANTS = (Quant.FP32, Quant.FP16, Quant.DYNAMIC_INT8, Quant.INT4)
DEFAULT_PREFILL_LEN = 128

# tokenizer file in the checkpoint -> bundle asset role read by liteship.runtime.tokenizer
TOKENIZER_ASSETS = {
    "tokenizer.json": "tokenizer_json",
    "vocab.json": "vocab",
    "merges.txt": "merges",
    "added_tokens.json": "added_tokens",
}
# Used when the checkpoint has no generation_config.json: transformers' own defaults (greedy).
GENERATION_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "max_new_tokens": 64}


@dataclass(frozen=True)
class ExportReport:
    bundle: Path
    seconds: float
    peak_rss_bytes: int
    tflite_bytes: int
    quantization: str


def resolve_lengths(cfg: GPT2Config, max_context: int | None, prefill_len: int | None) -> tuple[int, int]:
    C = cfg.n_positions if max_context is None else int(max_context)
    if not 2 <= C <= cfg.n_positions:
        raise ConvertError(f"--max-context {C} must be between 2 and the model's n_positions ({cfg.n_positions})")
    P = min(DEFAULT_PREFILL_LEN, C) if prefill_len is None else int(prefill_len)
    if not 1 <= P <= C:
        raise ConvertError(f"--prefill-len {P} must be between 1 and --max-context ({C})")
    return C, P


def tokenizer_assets(ckpt: Path) -> dict:
    assets = {role: (f"assets/{name}", ckpt / name) for name, role in TOKENIZER_ASSETS.items()
              if (ckpt / name).is_file()}
    if "tokenizer_json" not in assets and not {"vocab", "merges"} <= set(assets):
        raise ConvertError(f"{ckpt}: no tokenizer (needs tokenizer.json, or vocab.json and merges.txt)")
    return assets


def special_tokens(ckpt: Path, cfg: GPT2Config) -> dict:
    out = {"eos_token_id": cfg.eos_token_id, "bos_token_id": cfg.bos_token_id}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = ckpt / name
        if path.is_file():
            data = read_json(path, error=ConvertError)
            for key in ("eos_token", "bos_token", "pad_token"):
                tok = data.get(key)
                tok = tok.get("content") if isinstance(tok, dict) else tok
                if isinstance(tok, str):
                    out.setdefault(key, tok)
    return out


def generation_defaults(ckpt: Path) -> dict:
    out = dict(GENERATION_DEFAULTS)
    path = ckpt / "generation_config.json"
    if path.is_file():
        data = read_json(path, error=ConvertError)
        for key, default in GENERATION_DEFAULTS.items():  # a "hot" temperature would fail only on the device
            require(data, key, bool if isinstance(default, bool) else (int, float), str(path), error=ConvertError,
                    minimum=None if isinstance(default, bool) else 0, optional=True)
        out.update({k: data[k] for k in GENERATION_DEFAULTS if data.get(k) is not None})
    return out


def token_table_source(tflite: bytes, wte, assets: dict, say) -> str:
    """Where the runtime will read token embeddings: "lm_head" when the converted head weight still equals wte,
    else "asset", adding the bundle's own copy of the table to ``assets`` (convert/gpt2/token_table.py says why)."""
    from liteship.convert.gpt2.token_table import mismatch, own_copy
    from liteship.runtime.token_table import INT4, TokenTable

    try:
        head = TokenTable.from_model(tflite, *wte.shape)
    except RuntimeLiteshipError as exc:  # e.g. blockwise int4: scales per block of a row, not one per row
        say(f"the LM head weight is no table the runtime reads ({exc}); the bundle keeps an int8 token table")
        assets.update(own_copy(wte, np.dtype(np.int8)))
        return "asset"
    problem = mismatch(head, wte)
    if problem is None:
        return "lm_head"
    say(f"{problem}; the bundle keeps its own copy of the token table")
    assets.update(own_copy(wte, np.dtype(np.int8) if head.dtype == INT4 else head.dtype))
    return "asset"


def check_token_table(folder: Path, wte) -> None:
    """The finished bundle's token table, read as the runtime reads it, equals wte (else nothing is written)."""
    from liteship.convert.gpt2.token_table import mismatch
    from liteship.runtime.bundle import Bundle
    from liteship.runtime.token_table import TokenTable

    problem = mismatch(TokenTable.from_bundle(Bundle.open(folder, verify=False)), wte)
    if problem is not None:
        raise ConvertError(f"the converted bundle's token table is wrong: {problem}")


def build_saved_model(cfg: GPT2Config, params: dict, out_dir: Path, *, max_context: int, prefill_len: int) -> None:
    import tensorflow as tf

    from liteship.convert.gpt2.model import GPT2TF

    module = GPT2TF(cfg, params, max_context=max_context, prefill_len=prefill_len)
    tf.saved_model.save(module, str(out_dir), signatures=module.signatures())


def convert_to_tflite(saved_model_dir: Path, quant) -> tuple[bytes, dict]:
    """The prefill and decode signatures, converted together so they share one set of weights in the file.
    int4 quantizes the float32 model's weights afterwards (the converter has no int4 recipe)."""
    from liteship.convert.quant import int4_weights
    from liteship.convert.tflite import convert_saved_model

    if quant is Quant.INT4:
        tflite, report = convert_saved_model(saved_model_dir, Quant.FP32, signature_keys=list(SIGNATURES))
        return int4_weights(tflite), report
    return convert_saved_model(saved_model_dir, quant, signature_keys=list(SIGNATURES))


def export(ckpt, out_dir, *, quant="fp32", max_context: int | None = None, prefill_len: int | None = None,
           progress=None) -> ExportReport:
    """Convert the checkpoint folder ``ckpt`` to a bundle at ``out_dir``; returns what it took."""
    from liteship.convert.bundle import hash_source, write_bundle
    from liteship.convert.gpt2.weights import load_checkpoint
    from liteship.convert.prune import read_pruning

    say = progress or (lambda msg: None)
    quant = Quant.parse(quant)
    if quant not in GPT2_QUANTS:
        raise ConvertError(f"GPT-2 supports --quant fp32, fp16, dynamic-int8 or int4, not {quant.value} "
                           "(full-integer attention needs calibration liteship does not do for text)")
    ckpt = Path(ckpt)
    start = time.perf_counter()
    say(f"reading {ckpt}")
    cfg, params, source = load_checkpoint(ckpt)
    C, P = resolve_lengths(cfg, max_context, prefill_len)
    assets = tokenizer_assets(ckpt)
    config = {
        "model": cfg.to_dict(),
        "max_context": C,
        "prefill_len": P,
        **special_tokens(ckpt, cfg),
        "generation": generation_defaults(ckpt),
    }
    work = work_dir("gpt2")  # named with the pid; a later run sweeps it if this one is killed
    try:
        say(f"building the TensorFlow graph (max_context={C}, prefill_len={P})")
        build_saved_model(cfg, params, work / "saved_model", max_context=C, prefill_len=P)
        wte = params["wte.weight"]  # (V, E): what the runtime's token table must hold
        del params
        gc.collect()
        say(f"converting to TFLite ({quant.value})")
        tflite, report = convert_to_tflite(work / "saved_model", quant)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    config["token_table"] = token_table_source(tflite, wte, assets, say)
    say("writing the bundle")
    seconds = time.perf_counter() - start
    rss = peak_rss_bytes()  # of this process: the converter runs here
    source = dict(source, sha256=hash_source(ckpt))
    bundle = write_bundle(out_dir, tflite, family="gpt2", task="text-generation", quantization=quant,
                          config=config, assets=assets, source=source,
                          conversion={"seconds": round(seconds, 2), "peak_rss_bytes": rss,
                                      "flex_ops": report["flex_ops"], "pruning": read_pruning(ckpt)},
                          check=lambda folder: check_token_table(folder, wte))
    return ExportReport(Path(bundle), seconds, rss, len(tflite), quant.value)
