"""What pruning and quantization-aware training share across model families (convert/bit/prune.py,
convert/gpt2/prune.py): the options, the record the prune step leaves with its output for `liteship convert`,
the atomic write of that output, the magnitude-pruning schedule, the progress line and the report.

    liteship prune bit|gpt2 SOURCE --out PRUNED --data DATA --method structured|magnitude ...
        -> PRUNED (a checkpoint of the same format as SOURCE) + a sidecar record
    liteship convert bit|gpt2 PRUNED ...   -> the manifest's conversion.pruning is that record

The sidecar is `liteship-pruning.json` inside a checkpoint folder, or `NAME.npz.pruning.json` beside a file. It
carries the sha256 of the weights it describes, so a record left beside weights someone replaced is ignored.
TensorFlow and tfmot are imported inside functions.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from liteship.errors import ConvertError, signals_deferred
from liteship.runtime.files import replace_folder

SIDECAR_NAME = "liteship-pruning.json"
SIDECAR_SUFFIX = ".pruning.json"
SCHEMA = "liteship.pruning/1"
METHODS = ("structured", "magnitude")
# Structured BiT: which channels make up the fraction removed (convert/bit/prune.py). uniform: the same fraction of
# every unit; global: one ranking over all bottleneck channels, importance per unit of compute.
ALLOCATIONS = ("uniform", "global")
# Magnitude pruning reaches its final sparsity at this fraction of the fine-tuning steps and trains the rest with
# the mask fixed, so the last steps recover accuracy at the sparsity that ships.
PRUNE_UNTIL = 0.7
# TFMOT's mask reaches the requested sparsity per tensor up to rounding (one element); the report's measured
# figure is over all pruned tensors together, which the tests hold to within this of the request.
SPARSITY_TOLERANCE = 0.01


@dataclass(frozen=True)
class PruneOptions:
    method: str = "structured"  # one of METHODS
    sparsity: float = 0.5  # structured: fraction of units removed; magnitude: fraction of weights zeroed
    m_by_n: tuple[int, int] | None = None  # magnitude only: m zeros in every n consecutive weights (2:4)
    steps: int = 100  # fine-tuning steps after pruning (0: no fine-tuning)
    learning_rate: float = 1e-3
    batch_size: int = 16
    prune_embeddings: bool = False  # magnitude: also prune BiT's stem/head, GPT-2's token/position tables
    qat: bool = False  # quantization-aware fine-tuning (TFMOT quantize_model) after pruning
    quant: str = "fp32"  # the quantization the "after conversion" figures are measured in
    seed: int = 0
    allocation: str = "uniform"  # structured BiT: one of ALLOCATIONS

    def __post_init__(self):
        if self.method not in METHODS + ("none",):
            raise ConvertError(f"unknown --method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ConvertError(f"--sparsity {self.sparsity} must be at least 0 and below 1")
        if self.m_by_n is not None and self.method != "magnitude":
            raise ConvertError("--structured M:N is a magnitude-pruning pattern; use it with --method magnitude")
        if self.steps < 0:
            raise ConvertError(f"--steps {self.steps} must not be negative")
        if self.method == "magnitude" and self.steps < 2:
            raise ConvertError("--method magnitude prunes while it fine-tunes: give --steps 2 or more")
        if self.qat and self.method == "magnitude":
            # QAT's weight updates would refill the zeros (TFMOT's prune-preserving QAT is not wired up here)
            raise ConvertError("--qat does not keep magnitude pruning's zeros; use it with --method structured, "
                               "or alone (liteship qat bit)")
        if self.learning_rate <= 0:
            raise ConvertError(f"--learning-rate {self.learning_rate} must be positive")
        if self.batch_size < 1:
            raise ConvertError(f"--batch-size {self.batch_size} must be at least 1")
        if self.allocation not in ALLOCATIONS:
            raise ConvertError(f"unknown --allocation {self.allocation!r}; choose one of {', '.join(ALLOCATIONS)}")
        if self.allocation != "uniform" and self.method != "structured":
            raise ConvertError(f"--allocation {self.allocation} picks channels to remove; use it with "
                               "--method structured")


def parse_m_by_n(text: str | None) -> tuple[int, int] | None:
    """"2:4" -> (2, 4): m zeros in every n consecutive weights."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match or not 0 < int(match[1]) < int(match[2]):
        raise ConvertError(f"--structured {text!r} is not M:N with 0 < M < N (for example 2:4)")
    return int(match[1]), int(match[2])


# ---- the sidecar record --------------------------------------------------------------------------------------

def sidecar_path(source: str | os.PathLike) -> Path:
    source = Path(source)
    return source / SIDECAR_NAME if source.is_dir() else source.with_name(source.name + SIDECAR_SUFFIX)


def weights_sha256(source: str | os.PathLike, weights_name: str | None = None) -> str:
    from liteship.runtime.files import sha256_file

    source = Path(source)
    return sha256_file(source / weights_name if weights_name else source)


def read_pruning(source: str | os.PathLike) -> dict | None:
    """The record `liteship prune` left with SOURCE (the manifest's conversion.pruning), or None when there is none
    or it describes other weights than SOURCE holds now."""
    path = sidecar_path(source)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        weights = record["weights"]
    except (ValueError, KeyError, TypeError) as err:
        raise ConvertError(f"{path}: not a liteship pruning record ({err})") from None
    target = Path(source) / weights["file"] if Path(source).is_dir() else Path(source)
    if not target.is_file() or weights_sha256(target) != weights["sha256"]:
        print(f"warning: ignoring {path}: it describes other weights than {target} holds", file=sys.stderr)
        return None
    return record


def make_record(options: PruneOptions, *, family: str, source: str, weights_file: Path, report: dict) -> dict:
    return {"schema": SCHEMA, "family": family, "method": options.method,
            "requested": {"sparsity": options.sparsity,
                          "m_by_n": f"{options.m_by_n[0]}:{options.m_by_n[1]}" if options.m_by_n else None,
                          "steps": options.steps, "learning_rate": options.learning_rate,
                          "prune_embeddings": options.prune_embeddings, "qat": options.qat,
                          "allocation": options.allocation},
            "source": source, "weights": {"file": weights_file.name, "sha256": weights_sha256(weights_file)},
            **report}


# ---- atomic output -------------------------------------------------------------------------------------------

def check_out(out: str | os.PathLike, source: str | os.PathLike, *, folder: bool) -> tuple[Path, Path]:
    """Refuses an `out` that staged_output would refuse, or could not create: called before any fine-tuning, so
    a wrong --out costs nothing (and again when writing)."""
    from liteship.runtime.files import nearest_existing_folder

    out, source = Path(out), Path(source)
    if out.resolve() == source.resolve():
        raise ConvertError(f"--out {out} is the source itself; write the pruned model somewhere else")
    if folder and out.exists() and not (out / SIDECAR_NAME).is_file():
        raise ConvertError(f"--out {out} exists and is not a liteship prune output; refusing to replace it")
    if not folder and out.is_dir():
        raise ConvertError(f"--out {out} is a folder; a pruned BiT is one .npz file")
    ancestor = nearest_existing_folder(out)
    if not ancestor.is_dir():
        raise ConvertError(f"--out {out}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK):
        raise ConvertError(f"--out {out}: {ancestor} is not writable")
    return out, source


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, source: str | os.PathLike, *, folder: bool) -> Iterator[Path]:
    """A temporary sibling of `out` to write into (a folder when `folder`), renamed onto `out` only when the block
    completes: an error or Ctrl-C leaves nothing new and an old `out` intact. A file output's sidecar, written to
    sidecar_path(staged), moves with it (first, so it never outlives its weights unnoticed: it names their hash)."""
    out, source = check_out(out, source, folder=folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}{out.suffix}")
    if folder:
        tmp.mkdir()
    try:
        yield tmp
        if folder:
            replace_folder(tmp, out)
        else:
            with signals_deferred():  # the sidecar and its weights move together
                if sidecar_path(tmp).is_file():
                    os.replace(sidecar_path(tmp), sidecar_path(out))
                os.replace(tmp, out)
    finally:
        if folder:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            for leftover in (tmp, sidecar_path(tmp)):
                leftover.unlink(missing_ok=True)


# ---- measurements --------------------------------------------------------------------------------------------

def zero_fraction(arrays) -> float:
    """Fraction of exact zeros over all the given arrays together."""
    arrays = list(arrays)
    total = sum(a.size for a in arrays)
    return float(sum(int(np.count_nonzero(a == 0)) for a in arrays) / total) if total else 0.0


def tflite_sizes(tflite: bytes) -> dict:
    """The .tflite's size and its gzip -9 size: magnitude pruning only shrinks the second."""
    return {"bytes": len(tflite), "gzip_bytes": len(gzip.compress(tflite, compresslevel=9, mtime=0))}


def gzip_huffman_only(data: bytes) -> bytes:
    """A .gz of `data` (any gunzip reads it) made with zlib's Huffman-only strategy: no LZ77 matches. On pruned
    weights gzip's default strategy codes short runs of zeros as matches that cost more bits than the zeros coded
    one by one; Huffman-only reaches the bytes' order-0 entropy instead."""
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 9, zlib.Z_HUFFMAN_ONLY)  # 16+: gzip framing
    return packer.compress(data) + packer.flush()


def byte_entropy(data: bytes) -> float:
    """Order-0 entropy in bits per byte: what a coder of single bytes (DEFLATE's Huffman stage, with no repeats
    for LZ77 to find, as in trained weights) can at best reach."""
    counts = np.bincount(np.frombuffer(data, np.uint8), minlength=256)
    p = counts[counts > 0] / max(int(counts.sum()), 1)
    return float(-(p * np.log2(p)).sum())


def int8_weight_entropy(tflite: bytes, dense_below: float = 0.2) -> dict:
    """What magnitude pruning can buy a gzip'd int8 .tflite, measured on its constant int8 tensors (the weights):

    - bytes, zero fraction and order-0 entropy of all of them together, and of the non-zero bytes alone;
    - the kernels left dense (zero fraction below `dense_below`): names and bytes;
    - `rest_gzip_bytes`: gzip -9 of the file without those tensors (graph, biases, scales);
    - `bound_bytes`: weights at their pooled order-0 entropy + the rest gzip'd: what one fixed code per byte
      value reaches (DEFLATE re-fits its code every block, so it can land a little below where tensors differ).

    For a pruned model at zero fraction p the weight entropy is h(p) + (1 - p) * H(non-zero) bits per weight,
    where h is the binary entropy (the zero/non-zero mask): at p = 0.5, 1 + H/2."""
    from liteship.runtime.tflite_file import read_model

    model = read_model(tflite)
    chunks, dense, seen, rest = [], {}, set(), bytearray(tflite)
    for sg_index, sg in enumerate(model.subgraphs):
        for tensor in sg.tensors:
            extent = model.tensor_extent(sg_index, tensor.index)
            if tensor.dtype != "int8" or extent is None or extent in seen:
                continue
            seen.add(extent)
            offset, length = extent
            data = tflite[offset:offset + length]
            chunks.append(data)
            rest[offset:offset + length] = bytes(length)  # blanked: counted with the weights
            zeros = data.count(0) / length
            if zeros < dense_below and sum(d > 1 for d in tensor.shape) >= 2:  # a kernel, not a scale or shape
                dense[tensor.name] = length
    weights = b"".join(chunks)
    values = np.frombuffer(weights, np.uint8)
    h_all = byte_entropy(weights)
    # the blanked weights gzip to almost nothing, so this is the rest's own compressed size
    rest_gzip = len(gzip.compress(bytes(rest), compresslevel=9, mtime=0))
    return {"weight_bytes": len(weights), "zero_fraction": weights.count(0) / max(len(weights), 1),
            "entropy_bits": h_all, "nonzero_entropy_bits": byte_entropy(values[values != 0].tobytes()),
            "dense_tensors": dense, "dense_bytes": sum(dense.values()), "rest_gzip_bytes": rest_gzip,
            "bound_bytes": int(round(len(weights) * h_all / 8)) + rest_gzip}


# ---- magnitude pruning (tfmot) -------------------------------------------------------------------------------

def pruning_params(options: PruneOptions) -> dict:
    """prune_low_magnitude's arguments: sparsity rising polynomially (cubic, TFMOT's default power) from 0 to the
    target over the first PRUNE_UNTIL of the steps, mask updates every `frequency` steps, or TFMOT's M-by-N
    pattern (its own magnitude ranking inside every block of N, re-applied on the same steps)."""
    import tensorflow_model_optimization as tfmot

    frequency = max(1, options.steps // 20)
    end = max(frequency, int(options.steps * PRUNE_UNTIL) // frequency * frequency)  # an update lands on `end`
    schedule = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=options.sparsity,
                                                    begin_step=0, end_step=end, frequency=frequency)
    params = {"pruning_schedule": schedule}
    if options.m_by_n:
        params["sparsity_m_by_n"] = options.m_by_n
    return params


def strip_pruning(model):
    """tfmot.strip_pruning, checked: a wrapper left in the model would ship masks and a step counter."""
    import tensorflow_model_optimization as tfmot

    stripped = tfmot.sparsity.keras.strip_pruning(model)
    left = [layer.name for layer in stripped.layers if wrapped_for_pruning(layer)]
    if left:
        raise ConvertError(f"strip_pruning left pruning wrappers in {', '.join(left)}")
    return stripped


def wrapped_for_pruning(layer) -> bool:
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

    return isinstance(layer, PruneLowMagnitude)


def pruning_callbacks() -> list:
    import tensorflow_model_optimization as tfmot

    return [tfmot.sparsity.keras.UpdatePruningStep()]


# ---- progress and report -------------------------------------------------------------------------------------

def progress_callback(total_steps: int, label: str = "fine-tuning", stream=None):
    """A tf_keras callback drawing one progress line: [#####.....] step 12/50, loss 1.234, 3.1 s."""
    import time

    import tf_keras

    out = stream or sys.stderr

    class Progress(tf_keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.started, self.step = time.monotonic(), 0

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            done = int(30 * self.step / max(total_steps, 1))
            loss = (logs or {}).get("loss")
            text = f"loss {loss:.4f}" if loss is not None else ""
            out.write(f"\r{label} [{'#' * done}{'.' * (30 - done)}] step {self.step}/{total_steps} {text} "
                      f"{time.monotonic() - self.started:.1f} s")
            out.flush()

        def on_train_end(self, logs=None):
            out.write("\n")
            out.flush()

    return Progress()


def format_report(report: dict) -> str:
    """The prune run's summary: what was removed per layer, and the before/after figures side by side."""
    lines = [f"pruned {report['family']} ({report['method']}): parameters {report['params']['before']:,} -> "
             f"{report['params']['after']:,}, measured sparsity {report['sparsity']['measured']:.4f} of "
             f"{report['sparsity']['of']}"]
    for name, row in report.get("layers", {}).items():
        lines.append(f"  {name}: {row}")
    metric = report["metric"]
    stages = [(stage, value) for stage, value in report["quality"].items() if value is not None]
    lines.append(f"  {metric}: " + ", ".join(f"{stage} {value:.4f}" for stage, value in stages))
    sizes = report.get("tflite")
    if sizes:
        lines.append(f"  .tflite ({sizes['quant']}): {sizes['before']['bytes']:,} -> {sizes['after']['bytes']:,} "
                     f"bytes, gzip {sizes['before']['gzip_bytes']:,} -> {sizes['after']['gzip_bytes']:,} bytes")
    return "\n".join(lines)
