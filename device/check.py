"""`liteship check`: does each variant fit its budget on each device? (``liteship.check/1`` in RESULTS/check.json)

    sources and bundles -> variants (a source is converted once per --quant, reusing an identical earlier
    conversion: same source hash, mode and options) -> evaluation of each variant on --data against the fp32
    variant of the same source (on this host) -> one benchmark per variant x device cell (device/bench.py: push,
    run, figures back; devices in parallel) -> each cell judged against the budget (device/budget.py).

The results file is rewritten atomically after every cell and evaluation. A run that finds it resumes: a cell
whose bundle (model sha256) and benchmark settings are unchanged and that succeeded is not run again; failed
cells are retried. Verdicts are recomputed from the stored measurements each time, so editing the budget never
costs a re-run.
"""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from liteship.errors import LiteshipError
from liteship.runtime.bench import utc_timestamp
from liteship.runtime.bundle import cache_root, is_bundle
from liteship.runtime.files import write_json_atomic

from .bench import BenchSettings, bench_targets
from .budget import Budget, judge, measurements

SCHEMA = "liteship.check/1"
RESULTS_FILE = "check.json"
BASELINE_QUANT = "fp32"


class CheckError(LiteshipError):
    """Inputs `liteship check` cannot use: an unknown source kind, two variants of one name, a bad results file."""


@dataclass(frozen=True)
class ConvertOptions:
    """What a conversion depends on besides the source and the mode: part of the reuse key."""

    max_context: int | None = None    # GPT-2
    prefill_len: int | None = None    # GPT-2
    calibration: str | None = None    # keras/savedmodel int8 and int8x16
    labels: str | None = None         # keras/savedmodel


@dataclass
class Variant:
    name: str
    bundle: str
    family: str
    quantization: str
    source_sha256: str | None
    model_sha256: str
    size_bytes: int

    @classmethod
    def of(cls, bundle_path: Path, name: str) -> "Variant":
        from liteship.runtime.bundle import Bundle

        bundle = Bundle.open(bundle_path)
        return cls(name, str(bundle_path), bundle.family, bundle.quantization,
                   (bundle.manifest.get("source") or {}).get("sha256"), bundle.sha256(),
                   bundle.model_path.stat().st_size)


# ---- variants: bundles as given, sources converted (once) ---------------------------------------------------------

def source_kind(path: Path) -> str:
    """gpt2 (a Hugging Face folder), savedmodel (a folder with saved_model.pb) or keras (.keras / .h5)."""
    if path.is_dir() and (path / "config.json").is_file():
        return "gpt2"
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return "savedmodel"
    if path.is_file() and path.suffix in (".keras", ".h5"):
        return "keras"
    raise CheckError(f"{path}: neither a bundle nor a source liteship converts (a GPT-2 checkpoint folder, a "
                     "SavedModel folder or a .keras/.h5 file)")


def conversion_key(source_sha256: str, kind: str, quant: str, options: ConvertOptions) -> str:
    """What makes two conversions identical: the source's content, the mode, the options and liteship's version."""
    from liteship import __version__
    from liteship.convert.bundle import hash_source

    described = {"source": source_sha256, "kind": kind, "quant": quant, "liteship": __version__,
                 **{k: v for k, v in asdict(options).items() if v is not None}}
    for field in ("calibration", "labels"):  # their content, not where they are
        if described.get(field):
            described[field] = hash_source(described[field])
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def conversions_dir() -> Path:
    return cache_root() / "conversions"


def convert_variant(source: Path, quant: str, options: ConvertOptions, say: Callable[[str], None]) -> Path:
    """The bundle of ``source`` in ``quant``: an earlier identical conversion if there is one, else a new one."""
    from liteship.convert.bundle import hash_source
    from liteship.convert.quant import SUFFIXES, Quant

    kind = source_kind(source)
    q = Quant.parse(quant)
    key = conversion_key(hash_source(source), kind, q.value, options)
    out = conversions_dir() / f"{source.stem or source.name}-{SUFFIXES[q]}-{key[:12]}"
    if (out / "manifest.json").is_file():
        say(f"{source} {q.value}: reusing {out}")
        return out
    say(f"{source} {q.value}: converting to {out}")
    if kind == "gpt2":
        from liteship.convert.gpt2.export import export

        export(source, out, quant=q, max_context=options.max_context, prefill_len=options.prefill_len, progress=say)
        return out
    from liteship.convert.cli import convert_to_bundle

    common = dict(source=source, out=out, quant=q, calibration=Path(options.calibration) if options.calibration
                  else None, io_type="float32", allow_tf_ops=False,
                  labels=Path(options.labels) if options.labels else None, signature=None, mean=(0.0,), std=(1.0,))
    if kind == "savedmodel":
        return convert_to_bundle(source, **common)
    from liteship.convert.tflite import keras_as_saved_model

    with keras_as_saved_model(source) as saved_model:
        return convert_to_bundle(saved_model, **common)


def resolve_variants(inputs: list[str], quants: list[str], options: ConvertOptions,
                     say: Callable[[str], None]) -> list[Variant]:
    variants: list[Variant] = []
    for given in inputs:
        path = Path(given)
        if not path.exists():
            raise CheckError(f"{path}: no such bundle or source")
        if is_bundle(path):
            name = path.name[: -len(".tflite")] if path.name.endswith(".tflite") else path.name
            variants.append(Variant.of(path, name))
            continue
        for quant in quants:
            bundle = convert_variant(path, quant, options, say)
            variants.append(Variant.of(bundle, f"{path.stem or path.name}-{quant}"))
    names = [v.name for v in variants]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CheckError(f"two variants are named {twice[0]!r}; give bundles distinct folder names")
    return variants


def baseline_of(variant: Variant, variants: list[Variant]) -> Variant | None:
    """The fp32 variant of the same source (by source hash), which accuracy changes are measured against."""
    if variant.quantization == BASELINE_QUANT:
        return variant
    return next((v for v in variants if v.quantization == BASELINE_QUANT and v.family == variant.family
                 and v.source_sha256 and v.source_sha256 == variant.source_sha256), None)


# ---- quality on --data --------------------------------------------------------------------------------------------

def evaluate_variant(variant: Variant, baseline: Variant | None, data: Path, threads: int | None) -> dict:
    """Quality of a variant on DATA and its change against ``baseline`` (this host's interpreter).

    GPT-2: DATA is a text file (perplexity; change in %, greedy next-token agreement). Classifiers: a folder of
    class folders (accuracy; drop in points, top-1 agreement). The baseline against itself changes nothing."""
    against = baseline if baseline is not None and baseline is not variant else None
    out: dict = {"data": str(data), "baseline": baseline.name if baseline else None}
    if variant.family == "gpt2":
        from liteship.runtime.text_eval import evaluate_text

        r = evaluate_text(variant.bundle, data, reference=against.bundle if against else None, threads=threads)
        out.update(perplexity=r["perplexity"], tokens=r["tokens"])
        if against:
            out.update(perplexity_increase_pct=r["reference"]["perplexity_change_pct"],
                       agreement_pct=100 * r["reference"]["top1_agreement"], kl=r["reference"]["mean_kl"])
    else:
        from liteship.runtime.classify import evaluate

        r = evaluate(variant.bundle, data, reference_bundle=against.bundle if against else None, threads=threads)
        out.update(accuracy=r["accuracy"], images=r["images"])
        ref = r.get("reference") or {}
        if against and ref.get("accuracy_change") is not None:
            out.update(accuracy_drop_pct=-100 * ref["accuracy_change"], agreement_pct=100 * ref["top1_agreement"])
    if baseline is variant:
        change = "perplexity_increase_pct" if variant.family == "gpt2" else "accuracy_drop_pct"
        out.update({change: 0.0, "agreement_pct": 100.0})
    return out


# ---- the run ------------------------------------------------------------------------------------------------------

def _new_document(budget: Budget) -> dict:
    from liteship import __version__

    return {"schema": SCHEMA, "created": utc_timestamp(), "liteship": __version__, "budget": budget.as_dict(),
            "variants": {}, "cells": [], "passed": None}


def load_results(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckError(f"{path}: not a readable results file ({exc}); remove it or pass another --results") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise CheckError(f"{path}: schema {doc.get('schema') if isinstance(doc, dict) else None!r} is not {SCHEMA!r}; "
                         "remove it or pass another --results")
    return doc


def _cell_done(cell: dict | None, variant: Variant, settings: dict) -> bool:
    return bool(cell and cell.get("ok") and cell.get("model_sha256") == variant.model_sha256
                and cell.get("settings") == settings)


def judge_document(doc: dict, budget: Budget) -> dict:
    """(Re)computes every cell's verdicts and the overall result from the stored measurements."""
    doc["budget"] = budget.as_dict()
    for cell in doc["cells"]:
        variant = doc["variants"][cell["variant"]]
        evaluation = variant.get("eval")
        measured = measurements(cell.get("entry") if cell.get("ok") else None, evaluation, variant["size_bytes"])
        note = f"device failed: {cell.get('error')}" if not cell.get("ok") else ""
        verdicts = judge(budget.limits_for(cell["device"], variant["family"]), measured, missing_note=note)
        cell["verdicts"] = [v.as_dict() for v in verdicts]
        cell["passed"] = bool(cell.get("ok")) and all(v.passed for v in verdicts)
    doc["passed"] = bool(doc["cells"]) and all(c["passed"] for c in doc["cells"])
    return doc


def run_check(inputs: list[str], budget: Budget, *, devices: list[str], quants: list[str], results_dir: Path,
              settings: BenchSettings, data: Path | None = None, options: ConvertOptions = ConvertOptions(),
              target_options: dict | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Everything `liteship check` does but print; returns the judged ``liteship.check/1`` document."""
    say = progress or (lambda message: None)
    path = Path(results_dir) / RESULTS_FILE
    doc = load_results(path) or _new_document(budget)
    devices = list(dict.fromkeys(devices or ["local"]))
    variants = resolve_variants(inputs, quants, options, say)
    lock = threading.Lock()

    def save() -> None:
        with lock:
            write_json_atomic(path, judge_document(doc, budget))

    for v in variants:  # an evaluation is kept for the same model, and only while --data is given
        stored = doc["variants"].get(v.name) or {}
        keep = data is not None and stored.get("model_sha256") == v.model_sha256
        doc["variants"][v.name] = {**asdict(v), "eval": stored.get("eval") if keep else None}
    if data is not None:
        for v in variants:
            baseline = baseline_of(v, variants)
            entry = doc["variants"][v.name]
            old = entry.get("eval") or {}
            if old.get("data") == str(data) and old.get("baseline") == (baseline.name if baseline else None) \
                    and old.get("baseline_sha256") == (baseline.model_sha256 if baseline else None):
                continue
            say(f"{v.name}: evaluating on {data}" + (f" against {baseline.name}" if baseline and baseline is not v
                                                     else ""))
            entry["eval"] = dict(evaluate_variant(v, baseline, data, settings.threads),
                                 baseline_sha256=baseline.model_sha256 if baseline else None)
            save()

    settings_dict = json.loads(json.dumps(asdict(settings)))  # as check.json holds them: tuples become lists
    cells = {(c["variant"], c["device"]): c for c in doc["cells"]}

    def run_cell(variant: Variant, device: str) -> None:
        say(f"{variant.name} on {device}: benchmarking")
        result = bench_targets(variant.bundle, [device], settings, target_options=target_options,
                               progress=lambda m: say(f"{variant.name} on {m}"))
        entry = result["results"][0]
        cell = {"variant": variant.name, "device": device, "model_sha256": variant.model_sha256,
                "settings": settings_dict, "ok": entry["ok"], "error": entry["error"], "entry": entry,
                "finished": utc_timestamp()}
        with lock:
            cells[(variant.name, device)] = cell
            doc["cells"] = ordered(cells)
        save()

    def ordered(cells: dict) -> list[dict]:
        """Variants in the order given, devices in the order given; cells of earlier runs' extras last."""
        rank = {(v.name, d): (i, j) for i, v in enumerate(variants) for j, d in enumerate(devices)}
        return sorted(cells.values(), key=lambda c: rank.get((c["variant"], c["device"]), (len(rank), 0)))

    for v in variants:
        todo = [d for d in devices if not _cell_done(cells.get((v.name, d)), v, settings_dict)]
        for d in devices:
            if d not in todo:
                say(f"{v.name} on {d}: done in an earlier run")
        if todo:
            with ThreadPoolExecutor(max_workers=len(todo), thread_name_prefix="liteship-check") as pool:
                list(pool.map(lambda d: run_cell(v, d), todo))
    wanted = {(v.name, d) for v in variants for d in devices}  # this run's matrix: earlier runs' extras go
    doc["cells"] = [c for c in ordered(cells) if (c["variant"], c["device"]) in wanted]
    doc["variants"] = {v.name: doc["variants"][v.name] for v in variants}
    save()
    return doc
