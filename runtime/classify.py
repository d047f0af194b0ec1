"""Image classification with a bundle: images -> top-k labels with scores, and accuracy over a labeled folder.

Everything the model needs to see an image the way training did (size, resize, crop, mean/std, labels, whether the
output is logits) comes from the bundle's manifest; nothing is guessed. Quantized models are fed and read through
the scale/zero-point of their input and output tensors, taken from the interpreter (the file's own truth, which the
manifest's TensorSpecs copy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np

from liteship.errors import BundleError, RuntimeLiteshipError
from liteship.runtime.images import ImageSource, Preprocessing, decode_pixels, iter_files

DEFAULT_BATCH = 8  # images per invoke when the model's batch dimension is dynamic
# Manifest tasks this runs ("unknown": a lone .tflite without a manifest; its preprocessing decides).
IMAGE_TASKS = ("image-classification", "classification", "unknown")


@dataclass(frozen=True)
class Label:
    index: int
    label: str
    score: float  # a probability when the model outputs logits (softmax applied) or probabilities


@dataclass(frozen=True)
class Prediction:
    source: str  # the file path, or "<image N>" for arrays and PIL images
    top: tuple[Label, ...]  # best first

    @property
    def label(self) -> str:
        return self.top[0].label

    @property
    def index(self) -> int:
        return self.top[0].index

    @property
    def score(self) -> float:
        return self.top[0].score

    def to_dict(self) -> dict:
        return {"path": self.source, "top_k": [{"label": t.label, "index": t.index, "score": t.score} for t in self.top]}


@dataclass(frozen=True)
class Skipped:
    source: str
    reason: str  # one line naming the file, e.g. "notes.txt: not an image Pillow can read"

    def to_dict(self) -> dict:
        return {"path": self.source, "reason": self.reason}


class ImageClassifier:
    """A bundle's classifier, ready to run: `ImageClassifier("my-bit/").classify(["cat.jpg"], top_k=5)`."""

    def __init__(self, bundle, *, threads: int | None = None, backend: str = "auto", delegate=None):
        from liteship.runtime.bundle import Bundle
        from liteship.runtime.interpreter import create_interpreter, one_row_at_a_time

        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        if self.bundle.task not in IMAGE_TASKS:
            raise BundleError(f"{self.bundle.root} is a {self.bundle.family} bundle for {self.bundle.task}, "
                              "not an image classifier")
        self.preprocessing = Preprocessing.from_manifest(self.bundle.preprocessing)
        self.interpreter = create_interpreter(
            self.bundle.model_path, backend=backend, num_threads=threads, delegate=delegate
        )
        self.interpreter.allocate_tensors()
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleError(
                f"{self.bundle.model_path}: an image classifier has one input and one output, "
                f"this model has {len(inputs)} and {len(outputs)}"
            )
        self._input, self._output = inputs[0], outputs[0]
        self._check_input_shape()
        signature = tuple(int(d) for d in self._input.get("shape_signature", self._input["shape"]))
        self._dynamic_batch = signature[0] == -1
        self._batch = int(self._input["shape"][0]) if not self._dynamic_batch else None
        if self._dynamic_batch and one_row_at_a_time(self.interpreter, self.bundle.model_path):
            self._dynamic_batch, self._batch = False, 1  # batches would crash this runtime (runtime/interpreter.py)
        config = self.bundle.config or {}
        self.softmax = config.get("output") == "logits"
        self.num_classes = int(self._output["shape"][-1])
        self.labels = self._read_labels()

    # ------------------------------------------------------------------------------------------- public API

    @property
    def batch_size(self) -> int | None:
        """Images per interpreter call: the model's fixed batch, or None when it takes any batch (then a whole
        chunk goes in one call). A model whose batch is open in the file but fixed inside drops to 1 on first use."""
        return self._batch

    def classify(self, images_or_paths, top_k: int = 5) -> list[Prediction]:
        """Classify images (paths, bytes, PIL images or pixel arrays; one or a list). A bad image raises.

        Use `iter_classify` to skip bad files instead.
        """
        sources = _as_list(images_or_paths)
        results = []
        for result in self.iter_classify(sources, top_k=top_k):
            if isinstance(result, Skipped):
                raise RuntimeLiteshipError(result.reason)
            results.append(result)
        return results

    def iter_classify(self, sources: Iterable[ImageSource], top_k: int = 5,
                      batch_size: int | None = None) -> Iterator[Union[Prediction, Skipped]]:
        """Yield a Prediction or a Skipped (with the reason) per source, in order; never stops at a bad file."""
        if top_k < 1:
            raise RuntimeLiteshipError(f"--top-k must be at least 1, got {top_k}")
        chunk = self._batch or batch_size or DEFAULT_BATCH
        pending: list[tuple[str, np.ndarray]] = []
        for number, source in enumerate(sources):
            name = _source_name(source, number)
            try:
                pending.append((name, self.preprocessing(decode_pixels(source, name=name))))
            except RuntimeLiteshipError as exc:
                yield from self._flush(pending, top_k)
                pending = []
                yield Skipped(name, str(exc))
                continue
            if len(pending) == chunk:
                yield from self._flush(pending, top_k)
                pending = []
        yield from self._flush(pending, top_k)

    def classify_folder(self, path: str | os.PathLike, top_k: int = 5) -> Iterator[Union[Prediction, Skipped]]:
        """Every file under `path` (or `path` itself), sorted; non-images come back as Skipped."""
        return self.iter_classify(iter_files(path), top_k=top_k)

    def scores(self, inputs: np.ndarray) -> np.ndarray:
        """Preprocessed float inputs (N, ...model input shape without batch) -> (N, num_classes) float32 scores:
        probabilities (softmax of the logits when the manifest says "output": "logits", else the outputs as is)."""
        raw = self.outputs(inputs)
        return _softmax(raw) if self.softmax else raw

    def outputs(self, inputs: np.ndarray) -> np.ndarray:
        """Preprocessed float inputs (N, ...) -> (N, num_classes) model outputs, dequantized, no softmax."""
        if self._dynamic_batch and len(inputs) > 1:
            try:
                self._resize(len(inputs))
            except (RuntimeError, ValueError):
                # A batch dimension that is -1 in the file but fixed inside (a reshape to 1): run one at a time.
                self._dynamic_batch, self._batch = False, 1
                self._resize(1)
        outputs = [self._invoke(part) for part in self._batches(inputs)]
        return np.concatenate(outputs, axis=0)[: len(inputs)]

    # ------------------------------------------------------------------------------------------- internals

    def _flush(self, pending, top_k):
        if not pending:
            return
        names = [name for name, _ in pending]
        scores = self.scores(np.stack([array for _, array in pending]))  # (n, num_classes)
        k = min(top_k, self.num_classes)
        for name, row in zip(names, scores):
            best = np.argsort(-row, kind="stable")[:k]
            yield Prediction(name, tuple(Label(int(i), self.labels[i], float(row[i])) for i in best))

    def _batches(self, inputs: np.ndarray) -> Iterator[np.ndarray]:
        if self._batch is None:
            yield inputs
            return
        for start in range(0, len(inputs), self._batch):
            part = inputs[start : start + self._batch]
            if len(part) < self._batch:  # a fixed-batch model: pad the last batch, drop the padding's scores
                part = np.concatenate([part, np.zeros((self._batch - len(part),) + part.shape[1:], part.dtype)])
            yield part

    def _resize(self, batch: int) -> None:
        shape = [batch] + [int(d) for d in self._input["shape"][1:]]
        if [int(d) for d in self.interpreter.get_input_details()[0]["shape"]] != shape:
            self.interpreter.resize_tensor_input(self._input["index"], shape)
            self.interpreter.allocate_tensors()

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        index = self._input["index"]
        if self._dynamic_batch:
            self._resize(len(batch))
        self.interpreter.set_tensor(index, quantize(batch, self._input))
        self.interpreter.invoke()
        output = self.interpreter.get_output_details()[0]
        return dequantize(self.interpreter.get_tensor(output["index"]), output).reshape(len(batch), -1)

    def _check_input_shape(self) -> None:
        shape = tuple(int(d) for d in self._input["shape"])
        h, w = self.preprocessing.image_size
        c = 1 if self.preprocessing.channels == "L" else 3
        expected = (h, w, c) if self.preprocessing.layout == "NHWC" else (c, h, w)
        if shape[1:] != expected:
            raise BundleError(
                f"{self.bundle.model_path}: input {self._input['name']!r} has shape {list(shape)} but the manifest "
                f"preprocessing promises {self.preprocessing.layout} images of {h}x{w}"
            )

    def _read_labels(self) -> list[str]:
        try:
            path = self.bundle.asset("labels")
        except (BundleError, KeyError):
            path = None
        if path is None:
            return [str(i) for i in range(self.num_classes)]  # no labels shipped: class indices
        labels = Path(path).read_text(encoding="utf-8").splitlines()
        while labels and not labels[-1].strip():
            labels.pop()  # a trailing newline is not a class
        if len(labels) != self.num_classes:
            raise BundleError(f"{path}: {len(labels)} labels but the model outputs {self.num_classes} classes")
        return labels


def quantize(values: np.ndarray, details: dict) -> np.ndarray:
    """Float model input -> the tensor's dtype. int8/uint8: q = round(x / scale) + zero_point, saturated.

    Rounds half to even, as the QUANTIZE op of a float-I/O int8 model does when it runs (XNNPACK and the builtin
    kernel alike, measured with ai-edge-litert 2.3): feeding int8 here then gives bit-identical outputs. This
    matters for images: with [-1, 1] inputs and scale 1/127.5, about 40% of pixels land on a .5 tie.
    """
    dtype = np.dtype(details["dtype"])
    if dtype == np.float32:
        return values.astype(np.float32, copy=False)
    if dtype not in (np.int8, np.uint8):
        raise BundleError(f"input {details['name']!r} has dtype {dtype}; images need float32, int8 or uint8")
    scale, zero_point = _scale_zero_point(details)
    rounded = np.rint(values.astype(np.float32) / np.float32(scale))  # half to even
    info = np.iinfo(dtype)
    return np.clip(rounded + zero_point, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, details: dict) -> np.ndarray:
    """A model output -> float32: (q - zero_point) * scale for int8/uint8, unchanged for floats."""
    dtype = np.dtype(details["dtype"])
    if dtype in (np.int8, np.uint8, np.int16):
        scale, zero_point = _scale_zero_point(details)
        return (values.astype(np.float32) - zero_point) * scale
    return values.astype(np.float32, copy=False)


def _scale_zero_point(details: dict) -> tuple[float, int]:
    scale, zero_point = details.get("quantization", (0.0, 0))
    if not scale:
        raise BundleError(f"tensor {details['name']!r} is {np.dtype(details['dtype'])} but has no quantization scale")
    return float(scale), int(zero_point)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _as_list(images_or_paths) -> list:
    if isinstance(images_or_paths, (str, bytes, bytearray, os.PathLike)):
        return [images_or_paths]
    if isinstance(images_or_paths, np.ndarray):
        return list(images_or_paths) if images_or_paths.ndim == 4 else [images_or_paths]  # (N, H, W, C): a batch
    if hasattr(images_or_paths, "getpixel"):  # a single PIL image
        return [images_or_paths]
    return list(images_or_paths)


def _source_name(source, number: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"<image {number}>"


# ------------------------------------------------------------------------------------------------- evaluation


def evaluate(bundle, labeled_dir: str | os.PathLike, reference_bundle=None, *, threads: int | None = None,
             backend: str = "auto", delegate=None,
             progress: Callable[[Union[Prediction, Skipped]], None] | None = None) -> dict:
    """Accuracy of `bundle` on a folder of class folders (`labeled_dir/<class>/*.png`).

    A class folder's name must be one of the bundle's labels (exactly, or ignoring case, "_" and "-"; a bundle
    without labels.txt has labels "0".."N-1"). Files that are not images are skipped and listed with the reason.
    With `reference_bundle` (e.g. the fp32 bundle when evaluating int8), the same files also run through it and
    the result gains "reference": its accuracy, top-1 agreement between the two, and the accuracy change
    (this bundle minus the reference, as a fraction). `progress` is called once per file per bundle.
    """
    root = Path(labeled_dir)
    if not root.is_dir():
        raise RuntimeLiteshipError(f"{root}: not a folder of class folders")
    files, truths, stray = _labeled_files(root)
    if not files:
        raise RuntimeLiteshipError(f"{root}: no files inside class folders (expected {root}/<class>/<image>)")
    result = _evaluate_one(ImageClassifier(bundle, threads=threads, backend=backend, delegate=delegate),
                           files, truths, progress)
    result["skipped"] = [Skipped(os.fspath(p), f"{p}: not inside a class folder").to_dict() for p in stray] + result["skipped"]
    result["labeled_dir"] = os.fspath(root)
    if reference_bundle is not None:
        reference = _evaluate_one(ImageClassifier(reference_bundle, threads=threads, backend=backend,
                                                  delegate=delegate), files, truths, progress)
        both = sorted(set(result["_top1"]) & set(reference["_top1"]))
        agree = sum(result["_top1"][p] == reference["_top1"][p] for p in both)
        result["reference"] = {
            "bundle": reference["bundle"],
            "quantization": reference["quantization"],
            "accuracy": reference["accuracy"],
            "top1_agreement": agree / len(both) if both else None,
            "compared": len(both),
            "accuracy_change": (result["accuracy"] - reference["accuracy"])
            if result["accuracy"] is not None and reference["accuracy"] is not None else None,
        }
        reference.pop("_top1")
    result.pop("_top1")
    return result


def _labeled_files(root: Path) -> tuple[list[Path], list[str], list[Path]]:
    files, truths, stray = [], [], []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found = iter_files(entry)
            files.extend(found)
            truths.extend([entry.name] * len(found))
        else:
            stray.append(entry)
    return files, truths, stray


def _evaluate_one(classifier: ImageClassifier, files: Sequence[Path], truths: Sequence[str], progress) -> dict:
    class_index = _match_classes(classifier, sorted(set(truths)))
    per_class = {name: {"label": classifier.labels[class_index[name]], "images": 0, "correct": 0}
                 for name in sorted(set(truths))}
    truth_of = {os.fspath(p): t for p, t in zip(files, truths)}
    top1, skipped, correct, correct_top5 = {}, [], 0, 0
    for result in classifier.iter_classify(files, top_k=5):
        if progress is not None:
            progress(result)
        if isinstance(result, Skipped):
            skipped.append(result.to_dict())
            continue
        truth = truth_of[result.source]
        expected = class_index[truth]
        top1[result.source] = result.label
        hit = result.index == expected
        correct += hit
        correct_top5 += any(t.index == expected for t in result.top)
        per_class[truth]["images"] += 1
        per_class[truth]["correct"] += hit
    for counts in per_class.values():
        counts["accuracy"] = counts["correct"] / counts["images"] if counts["images"] else None
    evaluated = len(top1)
    return {
        "schema": "liteship.eval/1",
        "bundle": os.fspath(classifier.bundle.root),
        "quantization": classifier.bundle.quantization,
        "images": evaluated,
        "correct": correct,
        "accuracy": correct / evaluated if evaluated else None,
        "top5_accuracy": correct_top5 / evaluated if evaluated else None,
        "per_class": per_class,
        "skipped": skipped,
        "_top1": top1,
    }


def _normalize_label(text: str) -> str:
    return " ".join(text.replace("_", " ").replace("-", " ").lower().split())


def _match_classes(classifier: ImageClassifier, folders: list[str]) -> dict[str, int]:
    exact = {label: i for i, label in reversed(list(enumerate(classifier.labels)))}  # first occurrence wins
    loose = {_normalize_label(label): i for i, label in reversed(list(enumerate(classifier.labels)))}
    matched, unknown = {}, []
    for folder in folders:
        if folder in exact:
            matched[folder] = exact[folder]
        elif _normalize_label(folder) in loose:
            matched[folder] = loose[_normalize_label(folder)]
        else:
            unknown.append(folder)
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise RuntimeLiteshipError(
            f"class folder(s) {shown} match no label of {classifier.bundle.root} "
            f"({classifier.num_classes} labels, e.g. {classifier.labels[0]!r})"
        )
    return matched
