"""BiT checkpoint -> tf_keras model -> .tflite -> bundle.

    source (.npz or SavedModel folder) --weights.py--> {layer: weights} --model.py--> tf_keras model
        --liteship.convert.tflite (+ quant recipe, calibration on the user's images)--> .tflite --write_bundle--> folder

TensorFlow is imported inside functions so that `liteship --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from liteship.convert.bit import weights as W
from liteship.convert.bit.config import BiTConfig, get_config
from liteship.convert.prune import read_pruning
from liteship.convert.quant import Quant
from liteship.errors import ConvertError
from liteship.runtime.files import read_text, work_dir

FAMILY = "bit"
TASK = "image-classification"

# Input conventions, as the "preprocessing" block states them: normalized = (pixel / 255 - mean) / std.
INPUT_RANGES = {
    "-1,1": {"input_range": [-1, 1], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},  # original BiT checkpoints
    "0,1": {"input_range": [0, 1], "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},  # TF Hub image modules
}

# A SavedModel's outputs must be reproduced by our rebuild within this (max |diff| / max |logit|) to be trusted.
# float32 differences from GroupNorm re-expression and pre-standardized kernels are ~1e-6 relative; 1e-3 leaves
# room for a deeper net while still telling [0, 1] from [-1, 1] input apart (those differ by O(1)).
SAVED_MODEL_MATCH_RTOL = 1e-3


@dataclass
class Checkpoint:
    """A BiT checkpoint mapped onto our layers."""

    config: BiTConfig  # with num_classes from the head
    layers: dict  # {layer scope: {weight name: array}}, kernels standardized
    input_range: str  # a key of INPUT_RANGES
    format: str  # "bit-npz" | "saved-model"
    path: Path
    qat_ranges: dict = field(default_factory=dict)  # {site: (min, max)} `liteship qat bit` learned (weights.py)


def preprocessing_block(image_size: int, input_range: str) -> dict:
    """The manifest "preprocessing" block the runtime (runtime/images.py) reads: resize straight to the input size,
    no crop (BiT's eval pipeline resizes to the crop size, input_pipeline_tf2_or_jax.py)."""
    return {"image_size": [image_size, image_size], "resize": "bilinear", "crop": "none",
            **INPUT_RANGES[input_range], "channels": "RGB", "layout": "NHWC"}


def load_checkpoint(source: str | Path, variant: str | BiTConfig, *, input_range: str | None = None,
                    image_size: int | None = None) -> Checkpoint:
    """Read a BiT .npz or a TF Hub-style SavedModel folder strictly into `variant`'s layers."""
    path = Path(source)
    base = variant if isinstance(variant, BiTConfig) else get_config(variant)
    if input_range is not None and input_range not in INPUT_RANGES:
        raise ConvertError(f"unknown input range {input_range!r}; choose one of {', '.join(INPUT_RANGES)}")
    if not path.exists():
        raise ConvertError(f"BiT checkpoint not found: {path}")
    if path.is_dir():
        return _load_saved_model(path, base, input_range, image_size)
    tensors, ranges = W.split_qat_ranges(W.read_npz(path), str(path))
    tensors = W.normalize_names(tensors, str(path))
    config = dataclasses.replace(base, num_classes=W.num_classes_of(tensors, str(path)),
                                 unit_widths=W.unit_widths_of(tensors, base))
    layers = W.map_tensors(tensors, config, str(path))
    return Checkpoint(config, layers, input_range or "-1,1", "bit-npz", path, ranges)


def _load_saved_model(path: Path, base: BiTConfig, input_range: str | None, image_size: int | None) -> Checkpoint:
    """Read the SavedModel's variables by name (tf.saved_model.load), rebuild BiT from them, and check the rebuild
    against the SavedModel's own outputs.

    The module is fed a [0, 1] image (the TF Hub image convention). Our rebuild holds only the weights, not any
    rescaling the module does inside, so the probe also finds what the weights need: "-1,1" if the module maps
    [0, 1] to [-1, 1] itself (the BiT weights were trained on [-1, 1]), "0,1" if it passes input straight through.
    The bundle's preprocessing then states that range, and the bundle reproduces the module on [0, 1] images.
    """
    import tensorflow as tf

    if not (path / "saved_model.pb").is_file():
        raise ConvertError(f"{path} is a folder but not a SavedModel (no saved_model.pb)")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as err:  # TF raises many types for a damaged SavedModel
        raise ConvertError(f"{path}: cannot load the SavedModel ({str(err).splitlines()[0]})") from None
    variables = getattr(loaded, "variables", None)
    if not variables:
        raise ConvertError(f"{path}: the SavedModel exposes no .variables to read BiT weights from")
    raw = {}
    for variable in variables:
        if variable.name in raw:
            raise ConvertError(f"{path}: two variables are named {variable.name!r}")
        raw[variable.name] = variable.numpy()
    tensors = W.normalize_names(raw, str(path))
    config = dataclasses.replace(base, num_classes=W.num_classes_of(tensors, str(path)),
                                 unit_widths=W.unit_widths_of(tensors, base))
    layers = W.map_tensors(tensors, config, str(path))
    checkpoint = Checkpoint(config, layers, input_range or "0,1", "saved-model", path)
    if input_range is None:
        checkpoint.input_range = _probe_input_range(loaded, checkpoint, image_size or config.image_size)
    return checkpoint


def _probe_image(size: int) -> np.ndarray:
    """A deterministic smooth colour image in [0, 1], (1, size, size, 3): gradients and a disc, not noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    disc = (((yy - 0.4) ** 2 + (xx - 0.6) ** 2) < 0.08).astype(np.float32)
    return np.stack([xx, yy, 0.5 * disc + 0.25 * (1 - xx)], axis=-1)[None]


def _probe_input_range(loaded, checkpoint: Checkpoint, size: int) -> str:
    image01 = _probe_image(size)
    fn = loaded if callable(loaded) else loaded.signatures.get("serving_default")
    try:
        expected = fn(image01)
        if isinstance(expected, dict):
            (expected,) = expected.values()
        expected = np.asarray(expected)
    except Exception as err:
        raise ConvertError(f"{checkpoint.path}: cannot run the SavedModel on a {size}x{size} image to check the "
                           f"rebuild ({str(err).splitlines()[0]}); pass --input-range to skip the check") from None
    model = build_keras(checkpoint, image_size=size)
    scale = float(np.abs(expected).max()) or 1.0
    errors = {}
    for name, spec in INPUT_RANGES.items():
        normalized = (image01 - np.float32(spec["mean"][0])) / np.float32(spec["std"][0])
        errors[name] = float(np.abs(model(normalized).numpy() - expected).max()) / scale
    best = min(errors, key=errors.get)
    if errors[best] > SAVED_MODEL_MATCH_RTOL:
        raise ConvertError(f"{checkpoint.path}: rebuilding BiT {W.describe(checkpoint.config)} from the "
                           f"SavedModel's variables does not reproduce its outputs (relative error "
                           f"{errors[best]:.2g}); is it a BiT classifier?")
    return best


def build_keras(checkpoint: Checkpoint, *, image_size: int | None = None, groupnorm: str = "channelmean",
                batch_size: int | None = 1):
    """The tf_keras BiT with the checkpoint's weights."""
    from liteship.convert.bit.model import build_model

    model = build_model(checkpoint.config, image_size=image_size, groupnorm=groupnorm, batch_size=batch_size)
    W.load_into(model, checkpoint.layers)
    return model


def read_labels(path: str | Path, num_classes: int) -> bytes:
    """The labels file's bytes, checked to hold one label per class."""
    labels = read_text(path, what="labels file", error=ConvertError, empty_ok=True).splitlines()  # counted below
    while labels and not labels[-1].strip():
        labels.pop()
    if len(labels) != num_classes:
        raise ConvertError(f"labels file {path} has {len(labels)} labels but the checkpoint head has "
                           f"{num_classes} classes")
    return ("\n".join(labels) + "\n").encode("utf-8")


def keras_to_tflite(model, quant: Quant, *, representative_dataset=None, io_type: str = "float32",
                    min_runtime: str | None = None, calibrated_edit=None) -> tuple[bytes, dict]:
    """tf_keras model -> (.tflite bytes, conversion report) through a temporary SavedModel."""
    from liteship.convert.tflite import convert_saved_model, export_keras_to_saved_model

    tmp = work_dir("bit")  # named with the pid; a later run sweeps it if this one is killed
    try:
        export_keras_to_saved_model(model, tmp / "saved_model")
        return convert_saved_model(tmp / "saved_model", quant, representative_dataset=representative_dataset,
                                   io_type=io_type, min_runtime=min_runtime, calibrated_edit=calibrated_edit)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def qat_ranges_use(checkpoint: Checkpoint, quant: Quant, groupnorm: str) -> dict | None:
    """What becomes of the checkpoint's QAT ranges in `quant` (the manifest's conversion.qat_ranges), or None
    when it has none. int8 uses them; int8x16's 16-bit activations have the resolution to take the calibrated
    ranges (and its converter calibrates and quantizes in one step no range can be set in between); the float
    and dynamic modes have no activation ranges."""
    if not checkpoint.qat_ranges:
        return None
    use = {"sites": len(checkpoint.qat_ranges), "used": quant is Quant.INT8}
    if quant is Quant.INT8 and groupnorm != "channelmean":
        raise ConvertError(f"{checkpoint.path}: its QAT ranges were learned on the channelmean GroupNorm lowering; "
                           f"convert it with --groupnorm channelmean, not {groupnorm}")
    if quant is Quant.INT8X16:
        use["why_not"] = "int8x16 calibrates its 16-bit activation ranges"
    elif quant is not Quant.INT8:
        use["why_not"] = f"--quant {quant.value} has no calibrated activation ranges"
    return use


def qat_site_values(model, sites, image: np.ndarray) -> dict[str, np.ndarray]:
    """The float values of each QAT range's site (weights.QAT_RANGES_PREFIX) in the exported Keras `model` on
    `image` (1, S, S, 3): a layer's output, or a GroupNorm's inner tensor ("name.scale")."""
    import tf_keras

    layers = {layer.name: layer for layer in model.layers}
    wanted = []  # (site, layer, inner tensor or None)
    for site in sites:
        name, _, inner = site.partition(".")
        if name not in layers or (inner and inner not in ("scale", "scaled")):
            raise ConvertError(f"QAT range {site!r} names no tensor of this BiT")
        wanted.append((site, layers[name], inner or None))
    probe = tf_keras.Model(model.inputs, [layer.input if inner else layer.output for _, layer, inner in wanted])
    outputs = probe(image, training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return {site: np.asarray(layer.internals(value)[inner] if inner else value)
            for (site, layer, inner), value in zip(wanted, outputs)}


def checkpoint_to_tflite(checkpoint: Checkpoint, quant: Quant, *, image_size: int, groupnorm: str = "channelmean",
                         representative_dataset=None, io_type: str = "float32", min_runtime: str | None = None
                         ) -> tuple[bytes, dict]:
    """The checkpoint as .tflite bytes and the conversion report. In int8, QAT ranges the checkpoint carries set
    the ranges of their tensors (convert/calibrated_ranges.py; the report's "qat_ranges" says which); every other
    tensor is calibrated on `representative_dataset`. A checkpoint without them converts as it always has."""
    model = build_keras(checkpoint, image_size=image_size, groupnorm=groupnorm)
    use = qat_ranges_use(checkpoint, quant, groupnorm)
    edit = None
    if use and use["used"]:
        from liteship.convert.calibrated_ranges import set_ranges

        spec = INPUT_RANGES[checkpoint.input_range]
        image = (_probe_image(image_size) - np.float32(spec["mean"][0])) / np.float32(spec["std"][0])
        values = qat_site_values(model, checkpoint.qat_ranges, image)
        sites = {site: (values[site], pair) for site, pair in checkpoint.qat_ranges.items()}

        def edit(calibrated: bytes) -> bytes:
            edited, names = set_ranges(calibrated, image, sites)
            use["tflite_tensors"] = sum(len(found) for found in names.values())
            return edited

    tflite, report = keras_to_tflite(model, quant, representative_dataset=representative_dataset, io_type=io_type,
                                     min_runtime=min_runtime, calibrated_edit=edit)
    if use is not None:
        report["qat_ranges"] = use
    return tflite, report


def calibration_dataset(folder: str | Path, preprocessing: dict, *, limit: int | None = 200):
    """Representative dataset from the user's images, preprocessed exactly as the runtime will do it."""
    from liteship.convert.calibration import representative_dataset
    from liteship.runtime.images import preprocess

    height, width = preprocessing["image_size"]
    spec = {"name": "image", "shape": [1, height, width, 3], "dtype": "float32"}
    from liteship.convert.cli import calibration_meter

    return representative_dataset(folder, spec, preprocess=lambda path: preprocess(path, preprocessing),
                                  limit=limit, progress=calibration_meter())


def export_bit(source: str | Path, out_dir: str | Path, *, variant: str = "R50x1", quant: str | Quant = "fp32",
               calibration: str | Path | None = None, labels: str | Path | None = None,
               image_size: int | None = None, io_type: str = "float32", input_range: str | None = None,
               groupnorm: str = "channelmean", calibration_limit: int | None = 200, min_runtime: str | None = None,
               progress=None) -> Path:
    """Convert a BiT checkpoint to a bundle in `out_dir` and return its path.

    `quant` int8 needs `calibration` (a folder of the user's images); liteship never calibrates on random data.
    `io_type` int8/uint8 makes the model's input and output integer (Edge TPU); the manifest's signature records
    their scale and zero point. The output is logits (N, num_classes). `min_runtime` (`2.14`): a bundle that TFLite
    runtime loads, or a ConvertError (convert/quant.py).
    """
    from liteship.convert.quant import parse_min_runtime

    say = progress or (lambda message: None)
    quant = Quant.parse(quant)
    min_runtime = parse_min_runtime(min_runtime)
    if quant.needs_calibration and calibration is None:
        raise ConvertError(f"--quant {quant.value} needs --calibration IMAGE_DIR (your own images; liteship never "
                           "calibrates on random data)")
    started = time.perf_counter()
    say(f"reading {source}")
    checkpoint = load_checkpoint(source, variant, input_range=input_range, image_size=image_size)
    config = checkpoint.config
    size = image_size or config.image_size
    label_bytes = read_labels(labels, config.num_classes) if labels else None
    preprocessing = preprocessing_block(size, checkpoint.input_range)
    rep = None
    if quant.needs_calibration:  # read (and check) the images before the slow part
        rep = calibration_dataset(calibration, preprocessing, limit=calibration_limit)
    say(f"building BiT {W.describe(config)} ({config.num_classes} classes) at {size}x{size}")
    qat_ranges_use(checkpoint, quant, groupnorm)  # a lowering the ranges do not fit fails before the slow part
    say(f"converting to TFLite ({quant.value}, io {io_type})"
        + (f", {len(checkpoint.qat_ranges)} QAT ranges" if quant is Quant.INT8 and checkpoint.qat_ranges else ""))
    tflite, report = checkpoint_to_tflite(checkpoint, quant, image_size=size, groupnorm=groupnorm,
                                          representative_dataset=rep, io_type=io_type, min_runtime=min_runtime)
    from liteship.convert.bundle import hash_source, write_bundle

    model_config = {
        "variant": W.describe(config), "num_classes": config.num_classes, "image_size": size,
        "block_units": list(config.block_units), "width_factor": config.width_factor,
        "base_width": config.base_width, "num_groups": config.num_groups, "groupnorm_lowering": groupnorm,
        "output": "logits", "unit_widths": [list(w) for w in config.unit_widths] if config.unit_widths else None,
    }
    conversion = {"seconds": round(time.perf_counter() - started, 3), "flex_ops": report.get("flex_ops", []),
                  "pruning": read_pruning(checkpoint.path), "calibration_samples": getattr(rep, "num_samples", None),
                  "runtime": report["runtime"]}
    if "qat_ranges" in report:
        conversion["qat_ranges"] = report["qat_ranges"]
    assets = {"labels": ("assets/labels.txt", label_bytes)} if label_bytes is not None else None
    say(f"writing bundle {out_dir}")
    return write_bundle(out_dir, tflite, family=FAMILY, task=TASK, quantization=quant, io_type=io_type,
                        preprocessing=preprocessing, config=model_config, assets=assets,
                        source={"path": str(checkpoint.path), "sha256": hash_source(checkpoint.path),
                                "format": checkpoint.format},
                        conversion=conversion)
