"""Representative datasets for full-integer quantization, from the user's own data: never random."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from liteship.errors import ConvertError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
ARRAY_SUFFIXES = {".npy", ".npz"}


def _expected_shape(input_spec: dict) -> tuple:
    return tuple(int(d) for d in input_spec["shape"])


def _fits(shape: tuple, expected: tuple) -> bool:
    """-1 or None in the spec accepts any size."""
    return len(shape) == len(expected) and all(e in (-1, None) or e == s for s, e in zip(shape, expected))


def _arrays_from(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                for key in data.files:
                    yield f"{path.name}[{key}]", data[key]
        else:
            yield path.name, np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ConvertError(f"calibration file {path} is not a readable .npy/.npz array: {exc}") from None


def _samples(arr: np.ndarray, expected: tuple) -> Iterator[np.ndarray]:
    """Splits an array into model-input batches: one sample without a batch axis, a stack of samples along
    axis 0, or a stack of already-batched inputs. Raises ValueError when it is none of those."""
    batch = expected[0] if expected[0] not in (-1, None) else 1
    if arr.ndim == len(expected) - 1 and _fits(arr.shape, expected[1:]):
        yield np.repeat(arr[None], batch, axis=0)
    elif arr.ndim == len(expected) and _fits(arr.shape[1:], expected[1:]) and len(arr) >= batch:
        for i in range(0, len(arr) - batch + 1, batch):
            yield arr[i : i + batch]
    elif arr.ndim == len(expected) + 1 and _fits(arr.shape[1:], expected):
        yield from arr
    else:
        raise ValueError(arr.shape)


def collect_samples(source: str | Path, input_spec: dict, *, preprocess: Callable | None = None,
                    limit: int | None = None) -> list[np.ndarray]:
    """Loads calibration samples shaped like ``input_spec`` (a TensorSpec dict: shape with batch axis, dtype).

    ``source`` is a folder of images (needs ``preprocess(path) -> array``), a folder of .npy/.npz files, or one
    .npy/.npz file holding one sample or a stack. A sample of the wrong shape raises ConvertError naming the file."""
    source = Path(source)
    if not source.exists():
        raise ConvertError(f"calibration data {source} does not exist")
    expected = _expected_shape(input_spec)
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    arrays = [p for p in files if p.suffix.lower() in ARRAY_SUFFIXES]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    samples: list[np.ndarray] = []
    for path in arrays:
        for label, arr in _arrays_from(path):
            try:
                samples.extend(np.asarray(s, dtype=np.float32) for s in _samples(arr, expected))
            except ValueError:
                want = "x".join("?" if d in (-1, None) else str(d) for d in expected)
                raise ConvertError(
                    f"calibration array {label} has shape {tuple(arr.shape)}; the model input expects {want} "
                    "(one sample, or a stack of them along axis 0)"
                ) from None
    if images:
        if preprocess is None:
            raise ConvertError(f"{source} holds images, but this model has no image preprocessing; give .npy arrays")
        for path in spread(images, limit):  # decode only what will be used
            arr = np.asarray(preprocess(path), dtype=np.float32)
            try:
                samples.extend(_samples(arr, expected))
            except ValueError:
                raise ConvertError(
                    f"calibration image {path} preprocessed to shape {arr.shape}, expected {expected}") from None
    if not samples:
        raise ConvertError(f"no calibration samples in {source} (looked for .npy/.npz arrays and images)")
    return spread(samples, limit)


def spread(items: list, limit: int | None) -> list:
    """At most ``limit`` items evenly spaced over the list (deterministic). Files come sorted, so a folder per
    class would otherwise calibrate on the first classes only."""
    if not limit or len(items) <= limit:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def representative_dataset(source: str | Path, input_spec: dict, *, preprocess: Callable | None = None,
                           limit: int | None = None, progress: Callable[[int, int], None] | None = None
                           ) -> Callable[[], Iterator[list[np.ndarray]]]:
    """The callable TFLiteConverter.representative_dataset wants. Samples are loaded (and checked) now, so a bad
    calibration set fails before conversion starts. ``progress(done, total)`` is called as the converter
    consumes them (calibration is the slow part of an int8 conversion)."""
    samples = collect_samples(source, input_spec, preprocess=preprocess, limit=limit)

    def generate() -> Iterator[list[np.ndarray]]:
        for i, sample in enumerate(samples):
            yield [sample]
            if progress is not None:
                progress(i + 1, len(samples))

    generate.num_samples = len(samples)  # type: ignore[attr-defined]
    return generate
