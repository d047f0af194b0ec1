"""Hugging Face GPT-2 checkpoint folder -> liteship bundle with `prefill` and `decode` signatures.

checkpoint -> strict weight load (weights.py; safetensors matrices stay on disk) -> TF module whose matrices are
placeholders (model.py) -> SavedModel in a temporary folder -> TFLiteConverter.from_saved_model(signature_keys=
[prefill, decode]) -> quantization recipe -> the real matrices written into the .tflite (weight_writer.py) -> bundle
with the tokenizer files, special tokens, context length and generation defaults.

Memory: the converter holds each constant it converts several times over; with placeholders it holds almost
nothing, so converting costs about twice the fp32 weights plus TensorFlow itself (benchmarks/convert_gpt2_sizes.py;
gpt2-xl converts on a 24 GB machine). From 1 GiB of weights the .tflite keeps them after the flatbuffer at 64-bit
offsets (the only layout past 2 GiB).
"""

from __future__ import annotations

import gc
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liteship.convert.gpt2.config import GPT2Config
from liteship.convert.gpt2.kv_int8 import KV_CACHE_TYPES
from liteship.convert.quant import Quant
from liteship.errors import ConvertError, RuntimeLiteshipError
from liteship.runtime.files import read_json, require, work_dir
from liteship.runtime.memory import peak_rss_bytes

SIGNATURES = ("prefill", "decode")
GPT2_QUANTS = (Quant.FP32, Quant.FP16, Quant.DYNAMIC_INT8, Quant.INT4)
DEFAULT_PREFILL_LEN = 128
OFFSETS_FROM_BYTES = 1 << 30  # fp32 weights from which the .tflite keeps them at file offsets (see below)

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


def runtime_tokenizer(ckpt: Path, assets: dict | None = None):
    """The tokenizer the runtime will build from the bundle, built from the checkpoint's own files (``assets``:
    tokenizer_assets(ckpt), read when not given). Raises what ByteLevelBPETokenizer.from_bundle raises."""
    from types import SimpleNamespace

    from liteship.runtime.tokenizer import ByteLevelBPETokenizer

    assets = tokenizer_assets(ckpt) if assets is None else assets
    files = SimpleNamespace(root=ckpt, manifest={"assets": {role: rel for role, (rel, _) in assets.items()}},
                            config={}, asset=lambda role: assets[role][1])
    return ByteLevelBPETokenizer.from_bundle(files)


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


def token_table_source(tflite: Path, wte, assets: dict, say) -> str:
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


def build_saved_model(cfg: GPT2Config, params: dict, out_dir: Path, *, max_context: int, prefill_len: int,
                      placeholders: dict[str, float] | None = None) -> None:
    import tensorflow as tf

    from liteship.convert.gpt2.model import GPT2TF

    module = GPT2TF(cfg, params, max_context=max_context, prefill_len=prefill_len, placeholders=placeholders)
    tf.saved_model.save(module, str(out_dir), signatures=module.signatures())


def weights_outside_flatbuffer(cfg: GPT2Config) -> bool:
    """Whether the .tflite keeps its weights after the flatbuffer, at file offsets (the converter's buffer-offset
    layout), rather than inside it. A flatbuffer cannot pass 2 GiB, so gpt2-large's fp32 weights and beyond must;
    the inline layout's post-processing also unpacks the whole model into Python objects (several times its
    size), so every model of a gigabyte or more does. Smaller ones stay inline, the layout every runtime reads
    (the offset layout is recent: checked here with ai-edge-litert 2.3 only, not with tflite-runtime 2.14)."""
    from liteship.convert.gpt2.model import param_shapes

    return sum(int(np.prod(s)) for s in param_shapes(cfg).values()) * 4 >= OFFSETS_FROM_BYTES


def convert_to_tflite(saved_model_dir: Path, quant, out: Path, *, offsets: bool,
                      min_runtime: str | None = None) -> dict:
    """Writes ``out``: the prefill and decode signatures, converted together so they share one set of weights in
    the file. int4 quantizes the float32 model afterwards (the converter has no int4 recipe); export calls it."""
    from liteship.convert.tflite import convert_saved_model, use_buffer_offsets

    tflite, report = convert_saved_model(saved_model_dir, Quant.FP32 if quant is Quant.INT4 else quant,
                                         signature_keys=list(SIGNATURES),
                                         configure=use_buffer_offsets if offsets else None,
                                         min_runtime=min_runtime)
    out.write_bytes(tflite)
    return report


def convert_with_placeholders(cfg: GPT2Config, params: dict, quant: Quant, work: Path, tflite: Path, *, C: int,
                              P: int, say, min_runtime: str | None = None) -> dict:
    """Writes ``tflite``: the model converted with placeholders for its matrices, then the real matrices written
    in (convert/gpt2/weight_writer.py says why); the small weights (LayerNorms, biases, positions) are real, as the
    converter's choices may depend on them. Raises PlaceholderMismatch when the converter rewrote a placeholder."""
    from liteship.convert.gpt2.model import fold_bias, fold_weight, folded_pairs, matrix_names, param_shapes
    from liteship.convert.gpt2.weight_writer import (
        check_constants,
        find_placeholders,
        placeholder_values,
        unshare,
        write_weights,
    )
    from liteship.convert.gpt2.weights import materialize

    shapes = param_shapes(cfg)
    offsets = weights_outside_flatbuffer(cfg)
    int8 = quant is Quant.DYNAMIC_INT8
    values = placeholder_values(matrix_names(cfg), shapes, rows=int8 and not offsets)
    small = {name: materialize(value) for name, value in params.items() if name not in values}
    small["wpe.weight"] = small["wpe.weight"][:C]  # the rows the model can use: what the converter stores
    for fc, ln in folded_pairs(cfg).items():  # one matrix read at a time
        small[fc + ".bias"] = fold_bias(materialize(params[fc + ".weight"]), small[fc + ".bias"], small[ln + ".bias"])
    say(f"building the TensorFlow graph (max_context={C}, prefill_len={P}, placeholders for the matrices)")
    build_saved_model(cfg, small, work / "saved_model", max_context=C, prefill_len=P, placeholders=values)
    gc.collect()
    say(f"converting to TFLite ({quant.value})")
    report = convert_to_tflite(work / "saved_model", quant, tflite, offsets=offsets, min_runtime=min_runtime)
    shutil.rmtree(work / "saved_model")
    say("writing the weights")
    folds = {fc + ".weight": small[ln + ".weight"] for fc, ln in folded_pairs(cfg).items()}
    slots = find_placeholders(tflite, values, shapes, shared=int8 and offsets)
    if int8 and offsets:
        slots = unshare(tflite, slots)
    check_constants(tflite, slots, small.values())
    write_weights(tflite, slots, lambda name: fold_weight(materialize(params[name]), folds[name])
                  if name in folds else materialize(params[name]))
    return report


def int8_cache(ckpt: Path, cfg: GPT2Config, params: dict, calibration, say, *,
               equalize: bool = True) -> tuple[dict, dict, dict]:
    """(the weights to convert, scales for kv_int8.int8_cache_inputs, what the manifest records) from the
    calibration text's per-channel K/V ranges, measured on the checkpoint's float32 weights. ``equalize``: the
    channels' ranges are first evened out by factors folded into the attention weights (kv_equalize.py), and
    the weights returned are those; else they are ``params`` as they came."""
    from liteship.convert.gpt2 import kv_equalize
    from liteship.convert.gpt2.kv_int8 import calibration_windows, kv_channel_ranges, layer_ranges, scales_for
    from liteship.convert.gpt2.weights import materialize

    windows = calibration_windows(calibration, runtime_tokenizer(ckpt), cfg.n_positions)
    tokens = sum(len(w) for w in windows)
    say(f"measuring K/V ranges on {tokens} calibration tokens")
    channels = kv_channel_ranges(cfg, {n: materialize(v) for n, v in params.items()}, windows)
    gc.collect()
    config = {"dtype": "int8", "calibration_tokens": tokens, "equalized": equalize}
    if equalize:
        factors = kv_equalize.equalization(channels)
        params = kv_equalize.equalized_params(params, factors)
        config["ranges_unequalized"] = layer_ranges(channels)
        # what the equalized weights give, exactly, and room above it
        channels = {kv: channels[kv] * factors[kv] * kv_equalize.HEADROOM for kv in "kv"}
    ranges = config["ranges"] = layer_ranges(channels)
    return params, scales_for(ranges), config


def export(ckpt, out_dir, *, quant="fp32", max_context: int | None = None, prefill_len: int | None = None,
           min_runtime: str | None = None, progress=None, kv_cache: str = "float32",
           kv_calibration=None, kv_equalize: bool = True) -> ExportReport:
    """Convert the checkpoint folder ``ckpt`` to a bundle at ``out_dir``; returns what it took. ``min_runtime``
    (``2.14``): a bundle that TFLite runtime loads, or a ConvertError (convert/quant.py). ``kv_cache="int8"``:
    the KV cache is stored as int8 with per-layer scales fixed from ``kv_calibration`` text (kv_int8.py), its
    channels first evened out in the attention weights unless ``kv_equalize`` is False (kv_equalize.py)."""
    from liteship.convert.bundle import hash_source, write_bundle
    from liteship.convert.gpt2.weight_writer import PlaceholderMismatch
    from liteship.convert.gpt2.weights import load_checkpoint, materialize
    from liteship.convert.prune import read_pruning
    from liteship.convert.quant import check_min_runtime, int4_weights, parse_min_runtime

    say = progress or (lambda msg: None)
    quant = Quant.parse(quant)
    min_runtime = parse_min_runtime(min_runtime)
    check_min_runtime(quant, min_runtime)
    if quant not in GPT2_QUANTS:
        raise ConvertError(f"GPT-2 supports --quant fp32, fp16, dynamic-int8 or int4, not {quant.value} "
                           "(full-integer attention needs calibration liteship does not do for text)")
    if kv_cache not in KV_CACHE_TYPES:
        raise ConvertError(f"--kv-cache must be one of {', '.join(KV_CACHE_TYPES)}, not {kv_cache!r}")
    if kv_cache == "int8" and kv_calibration is None:
        raise ConvertError("--kv-cache int8 needs --kv-calibration TEXT (text like the model's, to fix the scales)")
    ckpt = Path(ckpt)
    start = time.perf_counter()
    say(f"reading {ckpt}")
    cfg, params, source = load_checkpoint(ckpt, lazy=True)  # safetensors' matrices stay on disk until written
    C, P = resolve_lengths(cfg, max_context, prefill_len)
    kv_scales = None
    if kv_cache == "int8":
        if weights_outside_flatbuffer(cfg):
            raise ConvertError("--kv-cache int8 is for models under 1 GiB of fp32 weights (the rewrite needs the "
                               "weights inside the flatbuffer)")
        params, kv_scales, kv_config = int8_cache(ckpt, cfg, params, kv_calibration, say, equalize=kv_equalize)
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
        tflite = work / "model.tflite"
        try:
            report = convert_with_placeholders(cfg, params, quant, work, tflite, C=C, P=P, say=say,
                                               min_runtime=min_runtime)
        except PlaceholderMismatch as exc:  # a converter that folds into a weight: the memory-hungry way then
            say(f"{exc}; converting with the real weights instead")
            shutil.rmtree(work / "saved_model", ignore_errors=True)
            say(f"building the TensorFlow graph (max_context={C}, prefill_len={P})")
            build_saved_model(cfg, {n: materialize(v) for n, v in params.items()}, work / "saved_model",
                              max_context=C, prefill_len=P)
            say(f"converting to TFLite ({quant.value})")
            report = convert_to_tflite(work / "saved_model", quant, tflite, offsets=weights_outside_flatbuffer(cfg),
                                      min_runtime=min_runtime)
        if quant is Quant.INT4:
            tflite.write_bytes(int4_weights(tflite.read_bytes()))
        if kv_scales:
            from liteship.convert.gpt2.kv_int8 import int8_cache_inputs

            say("storing the KV cache as int8")
            tflite.write_bytes(int8_cache_inputs(tflite.read_bytes(), kv_scales))
            config["kv_cache"] = kv_config
        wte = materialize(params["wte.weight"])  # (V, E): what the runtime's token table must hold
        del params
        config["token_table"] = token_table_source(tflite, wte, assets, say)
        say("writing the bundle")
        seconds = time.perf_counter() - start
        rss = peak_rss_bytes()  # of this process: the converter runs here
        source = dict(source, sha256=hash_source(ckpt))
        size = tflite.stat().st_size
        bundle = write_bundle(out_dir, tflite, family="gpt2", task="text-generation", quantization=quant,
                              config=config, assets=assets, source=source,
                              conversion={"seconds": round(seconds, 2), "peak_rss_bytes": rss,
                                          "flex_ops": report["flex_ops"], "pruning": read_pruning(ckpt),
                                          "runtime": report["runtime"]},
                              check=lambda folder: check_token_table(folder, wte), move_model=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportReport(Path(bundle), seconds, rss, size, quant.value)
