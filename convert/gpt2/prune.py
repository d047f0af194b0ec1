"""Pruning for GPT-2: a Hugging Face GPT-2 folder in, a smaller or sparser one out.

    structured: remove MLP neurons, the same number in every layer, so the folder is again a plain GPT-2 with a
                smaller `n_inner` (transformers, liteship and every other GPT-2 reader load it as such).
    magnitude:  TFMOT prune_low_magnitude on the four projections of every block (GPT2Body is a PrunableLayer:
                TFMOT wraps no custom layer by default), a polynomial-decay schedule over the fine-tuning, then
                strip_pruning. The token and position tables (wte is also the tied LM head) stay dense unless
                prune_embeddings.

Neuron importance (structured): neuron j of a block reads the residual stream through row j of c_fc and writes back
through column j of the MLP's c_proj; its reach is the product of the two L2 norms (with c_fc's bias, which can
keep a neuron active whatever it reads). The lowest-scoring neurons of each layer go.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from liteship.convert import prune as P
from liteship.convert.gpt2.config import GPT2Config
from liteship.errors import ConvertError

FAMILY = "gpt2"
DEFAULT_CONTEXT = 128  # training and evaluation window (tokens), at most the model's n_positions


def neuron_scores(params: dict, layer: int) -> np.ndarray:
    """(inner,) importance of layer `layer`'s MLP neurons: (|c_fc row| + |bias|) * |c_proj column|."""
    p = f"h.{layer}.mlp."
    reads = np.linalg.norm(params[p + "c_fc.weight"], axis=1) + np.abs(params[p + "c_fc.bias"])  # c_fc: (inner, E)
    writes = np.linalg.norm(params[p + "c_proj.weight"], axis=0)  # c_proj: (E, inner)
    return reads * writes


def structured_prune(cfg: GPT2Config, params: dict, sparsity: float
                     ) -> tuple[GPT2Config, dict, dict[str, str], float]:
    """Keep round(inner * (1 - sparsity)) neurons in every layer (rounded to a multiple of 8 when that leaves at
    least 8: SIMD kernels like the width). Returns (config with n_inner, params, per-layer report, fraction removed)."""
    inner = cfg.inner
    keep = max(1, int(round(inner * (1.0 - sparsity))))
    if keep >= 16:
        keep = int(round(keep / 8)) * 8
    params = dict(params)
    report = {}
    for i in range(cfg.n_layer):
        kept = np.sort(np.argsort(-neuron_scores(params, i), kind="stable")[:keep])
        p = f"h.{i}.mlp."
        params[p + "c_fc.weight"] = params[p + "c_fc.weight"][kept]  # (keep, E)
        params[p + "c_fc.bias"] = params[p + "c_fc.bias"][kept]
        params[p + "c_proj.weight"] = params[p + "c_proj.weight"][:, kept]  # (E, keep)
        report[f"h.{i}.mlp"] = f"neurons {inner}->{keep}"
    return dataclasses.replace(cfg, n_inner=keep), params, report, 1.0 - keep / inner


def one_shot_magnitude(params: dict, names: list[str], sparsity: float) -> dict:
    out = dict(params)
    for name in names:
        w = params[name]
        k = int(round(sparsity * w.size))
        if k:
            threshold = np.sort(np.abs(w), axis=None)[k - 1]
            out[name] = np.where(np.abs(w) <= threshold, 0.0, w).astype(np.float32)
    return out


def convert_folder(folder: Path, out: Path, quant: str, context: int) -> Path:
    from liteship.convert.gpt2.export import export

    return export(folder, out, quant=quant, max_context=context, prefill_len=context).bundle


def prune_gpt2(source: str | Path, out: str | Path, data: str | Path, options: P.PruneOptions, *,
               context: int | None = None, convert: bool = True, progress=None) -> dict:
    """Prune (or, method "none", only fine-tune) a GPT-2 checkpoint folder on the user's text file and write the
    result to `out` as a Hugging Face folder with its pruning record inside. Returns the record."""
    import tensorflow_model_optimization as tfmot

    from liteship.convert.gpt2.train import (
        bundle_perplexity,
        fine_tune,
        params_of,
        perplexity,
        read_text,
        save_checkpoint,
        training_model,
    )
    from liteship.convert.gpt2.weights import load_checkpoint
    from liteship.convert.quant import Quant

    say = progress or (lambda message: None)
    quant = Quant.parse(options.quant)
    if options.qat:
        raise ConvertError("--qat is for BiT (full-integer int8); GPT-2 bundles are fp32, fp16 or dynamic-int8")
    started = time.perf_counter()
    source = Path(source)
    P.check_out(out, source, folder=True)  # before the fine-tuning it would otherwise throw away
    say(f"reading {source}")
    cfg, params, _ = load_checkpoint(source)
    seq = min(context or DEFAULT_CONTEXT, cfg.n_positions) - 1  # +1 target token per window fits n_positions
    if seq < 1:
        raise ConvertError(f"--context {context} is too short; give at least 2 tokens")
    say(f"reading text from {data}")
    text = read_text(data, source, cfg, seq)  # too little or mismatched text fails here, before training
    say(f"{text.tokens} tokens: {len(text.train)} training / {len(text.test)} held-out windows of {seq + 1}")

    model = training_model(cfg, params, prune_embeddings=options.prune_embeddings)
    quality = {"before": perplexity(model, text)}
    params_before = int(sum(v.size for v in params.values()))
    new_cfg, layer_report, callbacks = cfg, {}, [P.progress_callback(options.steps)]
    body = model.get_layer("gpt2")
    pruned_names = body.prunable_names()
    if options.method == "structured":
        new_cfg, params, layer_report, removed = structured_prune(cfg, params, options.sparsity)
        model = training_model(new_cfg, params)
        quality["after_pruning"] = perplexity(model, text)
    elif options.method == "magnitude":
        if not options.m_by_n:
            shot = training_model(cfg, one_shot_magnitude(params, pruned_names, options.sparsity))
            quality["after_pruning"] = perplexity(shot, text)
        import tf_keras

        pruning = P.pruning_params(options)
        model = tf_keras.models.clone_model(
            model, clone_function=lambda layer: tfmot.sparsity.keras.prune_low_magnitude(layer, **pruning)
            if layer.name == "gpt2" else layer)
        callbacks += P.pruning_callbacks()
    say(f"fine-tuning {options.steps} steps (batch {options.batch_size}, learning rate {options.learning_rate})")
    loss = fine_tune(model, text, steps=options.steps, learning_rate=options.learning_rate,
                     batch_size=options.batch_size, seed=options.seed, callbacks=callbacks)
    if options.method == "magnitude":
        model = P.strip_pruning(model)
    quality["after_fine_tuning"] = perplexity(model, text)
    params = params_of(model)

    if options.method == "magnitude":
        layer_report = {name: f"sparsity {P.zero_fraction([params[name]]):.4f}" for name in pruned_names}
        sparsity = {"measured": P.zero_fraction(params[n] for n in pruned_names),
                    "of": "weights of the pruned layers"}
    elif options.method == "structured":
        sparsity = {"measured": removed, "of": "MLP neurons"}
    else:
        sparsity = {"measured": 0.0, "of": "nothing pruned"}
    report = {"family": FAMILY, "method": options.method, "sparsity": sparsity, "layers": layer_report,
              "params": {"before": params_before, "after": int(sum(v.size for v in params.values()))},
              "metric": "perplexity", "quality": quality, "fine_tuning": {"steps": options.steps, "final_loss": loss},
              "n_inner": new_cfg.n_inner, "context": seq + 1}

    with P.staged_output(out, source, folder=True) as staged:
        weights_file = save_checkpoint(source, staged, new_cfg, params)
        if convert:
            say(f"converting before and after ({quant.value}) to measure size and perplexity")
            work = Path(tempfile.mkdtemp(prefix="liteship-prune-gpt2-"))
            try:
                before = convert_folder(source, work / "before", quant.value, seq)
                after = convert_folder(staged, work / "after", quant.value, seq)
                quality["after_conversion"] = bundle_perplexity(after, text)
                report["tflite"] = {"quant": quant.value,
                                    "before": P.tflite_sizes((before / "model.tflite").read_bytes()),
                                    "after": P.tflite_sizes((after / "model.tflite").read_bytes())}
            finally:
                shutil.rmtree(work, ignore_errors=True)
        report["seconds"] = round(time.perf_counter() - started, 1)
        record = P.make_record(options, family=FAMILY, source=str(source), weights_file=weights_file,
                               report=report)
        P.sidecar_path(staged).write_text(json.dumps(record, indent=2) + "\n")
    say(P.format_report(record))
    return record
