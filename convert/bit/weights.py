"""Checkpoint names and value transforms for BiT.

Source format: the original BiT release (storage.googleapis.com/bit_models/BiT-{M,S}-R{50,101,152}x{1,2,3,4}.npz,
google-research/big_transfer): one flat .npz whose keys are TF variable scopes under "resnet/", kernels in HWIO,
GroupNorm gamma/beta as (C,), the head a 1x1 conv with an HWIO kernel (1, 1, C, num_classes) and a bias.

A TF Hub-style SavedModel folder of the same network (bit_tf2's Keras ResnetV2) carries the same scopes as variable
names ("resnet/block1/unit01/a/group_norm/gamma:0"), except that its head is a Dense ("head/dense/kernel", (C, N)).
We load such a folder with tf.saved_model.load, read its variables by name into the same table, and rebuild the
network ourselves (so GroupNorm gets our TFLite-friendly lowering); `export.py` checks the rebuilt model against
the SavedModel's own outputs before trusting it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from liteship.convert.bit.config import BiTConfig
from liteship.errors import ConvertError

PREFIX = "resnet/"

# Templates relative to PREFIX. {b}: block 1-4, {u}: unit 01.., {p}: sub-layer a/b/c of a bottleneck unit.
ROOT_KERNEL = "root_block/standardized_conv2d/kernel"  # (7, 7, 3, 64wf) HWIO
UNIT_GN_GAMMA = "block{b}/unit{u:02d}/{p}/group_norm/gamma"  # (C_in of that sub-layer,)
UNIT_GN_BETA = "block{b}/unit{u:02d}/{p}/group_norm/beta"
UNIT_KERNEL = "block{b}/unit{u:02d}/{p}/standardized_conv2d/kernel"  # a, c: 1x1; b: 3x3 (carries the stride)
UNIT_PROJ_KERNEL = "block{b}/unit{u:02d}/a/proj/standardized_conv2d/kernel"  # (1, 1, C_in, 4w), first unit only
HEAD_GN_GAMMA = "group_norm/gamma"  # (feature_width,)
HEAD_GN_BETA = "group_norm/beta"
HEAD_KERNEL = "head/conv2d/kernel"  # (1, 1, feature_width, num_classes)
HEAD_BIAS = "head/conv2d/bias"  # (num_classes,)

# bit_tf2 (and TF Hub modules exported from it) name the head a Dense with a 2-D kernel; same values otherwise.
ALIASES = {
    "head/dense/kernel": HEAD_KERNEL,
    "head/dense/bias": HEAD_BIAS,
}


# Quantization-aware training's activation ranges (`liteship qat bit`), one (min, max) float32 pair per tensor the
# QAT model fake-quantized, keyed by the site: a Keras layer name of liteship's BiT ("block1__unit01__add",
# "group_norm__relu"), or a GroupNorm's name and one of its inner tensors ("group_norm.scale",
# "group_norm.scaled"). Not part of the BiT release; the converter gives them to int8 instead of calibrating those
# tensors.
QAT_RANGES_PREFIX = "liteship_qat_ranges/"


# ---- value transforms, named by direction ----

STANDARDIZED_TOLERANCE = 1e-5  # |mean| and |var - 1| under which a filter counts as standardized already

def standardize_kernel(kernel_hwio: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    """Weight standardization, done once at export instead of on every inference.

    BiT (bit_tf2 StandardizedConv2D, bit_pytorch StdConv2d) normalizes each output filter over H, W and I:
    (w - mean) / sqrt(var + 1e-10), population variance. Computed in float64 so the baked kernel equals what the
    float32 graph would compute to within rounding.
    """
    w = kernel_hwio.astype(np.float64)
    mean = w.mean(axis=(0, 1, 2), keepdims=True)  # (1, 1, 1, O)
    var = w.var(axis=(0, 1, 2), keepdims=True)  # (1, 1, 1, O)
    out = ((w - mean) / np.sqrt(var + eps)).astype(np.float32)
    # A filter that is standardized already (liteship prune writes them so) is kept bit for bit: redoing it would
    # change it only by rounding, but would turn a magnitude-pruned filter's exact zeros into ~1e-9s that no
    # longer compress. Float32 rounding leaves such a filter's mean within ~1e-8 and variance within ~1e-6.
    done = (np.abs(mean) < STANDARDIZED_TOLERANCE) & (np.abs(var - 1.0) < STANDARDIZED_TOLERANCE)  # (1, 1, 1, O)
    return np.where(done, kernel_hwio, out).astype(np.float32)


def head_kernel_hwio_to_dense(kernel: np.ndarray) -> np.ndarray:
    """(1, 1, C, N) 1x1-conv head -> (C, N) Dense kernel: a 1x1 conv on a 1x1 map is a matmul."""
    return kernel.reshape(kernel.shape[2], kernel.shape[3])


def head_kernel_dense_to_hwio(kernel: np.ndarray) -> np.ndarray:
    """(C, N) Dense kernel (bit_tf2 / Hub naming) -> (1, 1, C, N), the npz layout the table expects."""
    return kernel.reshape(1, 1, *kernel.shape)


def identity(value: np.ndarray) -> np.ndarray:
    return value


@dataclass(frozen=True)
class Target:
    """Where one checkpoint tensor goes: a Keras layer (npz scope), its weight, the expected source shape."""

    layer_scope: str
    weight: str  # "kernel", "bias", "gamma", "beta"
    shape: tuple[int, ...]
    transform: Callable[[np.ndarray], np.ndarray]


def expected_tensors(config: BiTConfig) -> dict[str, Target]:
    """Every tensor a BiT checkpoint of `config` must contain (names relative to PREFIX) -> its target."""
    table: dict[str, Target] = {}

    def conv(name, shape):
        table[name] = Target(name.rsplit("/", 1)[0], "kernel", shape,
                             lambda w: standardize_kernel(w, config.ws_epsilon))

    def gn(gamma, beta, channels):
        scope = gamma.rsplit("/", 1)[0]
        table[gamma] = Target(scope, "gamma", (channels,), identity)
        table[beta] = Target(scope, "beta", (channels,), identity)

    conv(ROOT_KERNEL, (7, 7, 3, config.root_width))
    channels = config.root_width
    for block, units in enumerate(config.block_units):
        width = config.bottleneck_width(block)
        for unit in range(1, units + 1):
            names = dict(b=block + 1, u=unit)
            gn(UNIT_GN_GAMMA.format(p="a", **names), UNIT_GN_BETA.format(p="a", **names), channels)
            if unit == 1 and (block > 0 or channels != 4 * width):
                conv(UNIT_PROJ_KERNEL.format(**names), (1, 1, channels, 4 * width))
            width_a, width_b = config.mid_widths(block, unit)
            conv(UNIT_KERNEL.format(p="a", **names), (1, 1, channels, width_a))
            gn(UNIT_GN_GAMMA.format(p="b", **names), UNIT_GN_BETA.format(p="b", **names), width_a)
            conv(UNIT_KERNEL.format(p="b", **names), (3, 3, width_a, width_b))
            gn(UNIT_GN_GAMMA.format(p="c", **names), UNIT_GN_BETA.format(p="c", **names), width_b)
            conv(UNIT_KERNEL.format(p="c", **names), (1, 1, width_b, 4 * width))
            channels = 4 * width
    gn(HEAD_GN_GAMMA, HEAD_GN_BETA, channels)
    table[HEAD_KERNEL] = Target("head/conv2d", "kernel", (1, 1, channels, config.num_classes),
                                head_kernel_hwio_to_dense)
    table[HEAD_BIAS] = Target("head/conv2d", "bias", (config.num_classes,), identity)
    return table


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of a BiT .npz, by their original names."""
    from liteship.runtime.files import load_array

    if not Path(path).exists():
        raise ConvertError(f"BiT checkpoint not found: {path}")
    arrays = load_array(path, error=ConvertError)
    if not isinstance(arrays, dict):
        raise ConvertError(f"{path}: a single .npy array, not a BiT .npz checkpoint of named tensors")
    return arrays


def split_qat_ranges(arrays: dict[str, np.ndarray], source: str
                     ) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, float]]]:
    """(the BiT tensors, {site: (min, max)}) of a .npz; each range must be two finite floats with min <= 0 <= max
    (int8 represents zero exactly)."""
    tensors, ranges = {}, {}
    for name, value in arrays.items():
        if not name.startswith(QAT_RANGES_PREFIX):
            tensors[name] = value
            continue
        low, high = (np.asarray(value, np.float64).tolist() if np.shape(value) == (2,) else (np.nan, np.nan))
        if not (np.isfinite(low) and np.isfinite(high) and low <= 0.0 <= high and low < high):
            raise ConvertError(f"{source}: {name!r} is not a quantization range (two finite numbers, "
                               f"min <= 0 <= max, min < max): {np.asarray(value).tolist()}")
        ranges[name[len(QAT_RANGES_PREFIX):]] = (low, high)
    return tensors, ranges


def qat_range_arrays(ranges: dict[str, tuple[float, float]]) -> dict[str, np.ndarray]:
    """The .npz arrays that carry `ranges` (split_qat_ranges reads them back)."""
    return {QAT_RANGES_PREFIX + site: np.array(pair, np.float32) for site, pair in ranges.items()}


def normalize_names(tensors: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Strip "resnet/" and ":0", map bit_tf2 aliases; a tensor outside "resnet/" is unmapped and raises."""
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        short = re.sub(r":\d+$", "", name)
        if not short.startswith(PREFIX):
            raise ConvertError(f"{source}: unexpected tensor {name!r} (BiT checkpoints keep every tensor under "
                               f"{PREFIX!r})")
        short = short[len(PREFIX):]
        if short in ALIASES:
            short = ALIASES[short]
            if short == HEAD_KERNEL and value.ndim == 2:
                value = head_kernel_dense_to_hwio(value)
        out[short] = value
    return out


def num_classes_of(tensors: dict[str, np.ndarray], source: str) -> int:
    """Class count of the checkpoint's head (21843 for BiT-M, 1000 for BiT-S, anything for a fine-tuned head)."""
    bias = tensors.get(HEAD_BIAS)
    if bias is None:
        raise ConvertError(f"{source}: missing tensor {PREFIX + HEAD_BIAS!r}; a BiT checkpoint without a "
                           "classification head cannot become an image classifier")
    if bias.ndim != 1:
        raise ConvertError(f"{source}: tensor {PREFIX + HEAD_BIAS!r} has shape {tuple(bias.shape)}, expected (N,)")
    return int(bias.shape[0])


def unit_widths_of(tensors: dict[str, np.ndarray], config: BiTConfig) -> tuple[tuple[int, int], ...] | None:
    """The (a, b) bottleneck widths a (structured-pruned) checkpoint's kernels have, or None when every unit has its
    block's full width. A kernel that is missing or not 4-D is left for `map_tensors` to report."""
    widths, pruned = [], False
    for block, units in enumerate(config.block_units):
        for unit in range(1, units + 1):
            pair = []
            for part in "ab":
                kernel = tensors.get(UNIT_KERNEL.format(b=block + 1, u=unit, p=part))
                pair.append(int(kernel.shape[-1]) if kernel is not None and kernel.ndim == 4
                            else config.bottleneck_width(block))
            pruned |= pair != [config.bottleneck_width(block)] * 2
            widths.append(tuple(pair))
    return tuple(widths) if pruned else None


def map_tensors(tensors: dict[str, np.ndarray], config: BiTConfig, source: str
                ) -> dict[str, dict[str, np.ndarray]]:
    """Strictly map checkpoint tensors (already `normalize_names`d) to {layer_scope: {weight: value}}.

    Raises ConvertError naming the first unmapped tensor, missing tensor, or shape mismatch.
    """
    table = expected_tensors(config)
    unmapped = sorted(set(tensors) - set(table))
    if unmapped:
        more = f" and {len(unmapped) - 1} more" if len(unmapped) > 1 else ""
        raise ConvertError(f"{source}: unmapped tensor {PREFIX + unmapped[0]!r}{more} (not part of BiT "
                           f"{describe(config)}; wrong --variant?)")
    missing = [name for name in table if name not in tensors]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ConvertError(f"{source}: missing tensor {PREFIX + missing[0]!r}{more} for BiT {describe(config)}")
    layers: dict[str, dict[str, np.ndarray]] = {}
    for name, target in table.items():
        value = tensors[name]
        if tuple(value.shape) != target.shape:
            raise ConvertError(f"{source}: tensor {PREFIX + name!r} has shape {tuple(value.shape)}, expected "
                               f"{target.shape} for BiT {describe(config)} (wrong --variant?)")
        layers.setdefault(target.layer_scope, {})[target.weight] = target.transform(value.astype(np.float32))
    return layers


def describe(config: BiTConfig) -> str:
    depth = 2 + 3 * sum(config.block_units)
    return f"R{depth}x{config.width_factor}"


def load_into(model, layers: dict[str, dict[str, np.ndarray]]) -> None:
    """Assign mapped weights to the tf_keras model from `model.build_model`; every model weight must be covered."""
    from liteship.convert.bit.model import layer_name

    by_name = {layer.name: layer for layer in model.layers}
    assigned = set()
    for scope, weights in layers.items():
        layer = by_name.get(layer_name(scope))
        if layer is None:
            raise ConvertError(f"BiT model has no layer for checkpoint scope {scope!r}")
        values = []
        for variable in layer.weights:
            short = variable.name.split("/")[-1].split(":")[0]
            if short not in weights:
                raise ConvertError(f"checkpoint has no {short!r} for layer {scope!r}")
            values.append(weights[short])
        layer.set_weights(values)
        assigned.add(layer.name)
    unassigned = [layer.name for layer in model.layers if layer.weights and layer.name not in assigned]
    if unassigned:
        raise ConvertError(f"BiT model layer {unassigned[0]!r} got no weights from the checkpoint")
