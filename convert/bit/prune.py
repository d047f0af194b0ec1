"""Pruning and quantization-aware training for BiT: a BiT .npz in, a smaller or sparser BiT .npz out.

    structured: remove bottleneck channels (the outputs of each unit's a and b convolutions, and the matching
                inputs of b and c), so the dense model itself is smaller and faster on every delegate. The unit's
                output width (the residual stream) is untouched.
    magnitude:  TFMOT prune_low_magnitude on every standardized convolution (the stem and the head too with
                prune_embeddings), a polynomial-decay schedule over the fine-tuning, then strip_pruning.
    qat:        TFMOT quantize_model fine-tuning with learned activation ranges (quantize_aware), so the weights
                settle where int8 rounding leaves them and each range where it costs the least; the ranges travel
                in the .npz (weights.QAT_RANGES_PREFIX) and `liteship convert bit --quant int8` uses them instead of
                calibrating those tensors.

Channel importance (structured): under weight standardization every filter has the same norm (sqrt(H*W*I)), so a
filter's own L1 norm ranks nothing. What decides how much a bottleneck channel carries is its GroupNorm scale
(|gamma|: the GroupNorm in front of the next convolution) times the L1 norm of the standardized weights that read
it. Channels are ranked inside their GroupNorm group and the same number is kept in every group: each new group
is a subset of an old one (its statistics stay close), and the width stays a multiple of the group count.

Which channels make up the fraction removed (--allocation):
    uniform: every a and b convolution loses that fraction of its own channels (rounded per group).
    global:  one ranking over all bottleneck channels, in steps of one channel from every group of a convolution
             (its least important one in each group). A step is worth its channels' importance, normalised by the
             mean importance of that convolution's channels (scores are not comparable across layers), divided by
             the multiply-accumulates one of its channels costs at the training resolution (NetAdapt's idea: take
             away where a channel costs the most time). The cheapest steps go first until the fraction of all
             bottleneck channels is removed; every group keeps at least one channel.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from liteship.convert import prune as P
from liteship.convert.bit import weights as W
from liteship.convert.bit.config import BiTConfig
from liteship.errors import ConvertError

FAMILY = "bit"
QAT_RANGE_SAMPLES = 64  # training images whose float activations set QAT's starting ranges


# ---- structured -----------------------------------------------------------------------------------------------

def keep_per_group(scores: np.ndarray, groups: int, sparsity: float) -> np.ndarray:
    """Indices (sorted) of the channels to keep: the same number in every GroupNorm group, by score within it."""
    size = len(scores) // groups  # channels per group
    return keep_top(scores, groups, max(1, int(round(size * (1.0 - sparsity)))))


def keep_top(scores: np.ndarray, groups: int, keep: int) -> np.ndarray:
    """Indices (sorted) of the `keep` best-scored channels of every GroupNorm group."""
    size = len(scores) // groups
    kept = [g * size + np.sort(np.argsort(-scores[g * size:(g + 1) * size], kind="stable")[:keep])
            for g in range(groups)]
    return np.concatenate(kept)


def channel_costs(config: BiTConfig, image_size: int) -> list[tuple[int, int]]:
    """Multiply-accumulates one channel of each unit's a and b output costs at `image_size` (unpruned widths):
    an a channel is an output of the 1x1 a conv at the unit's input resolution and an input of the 3x3 b conv; a
    b channel is an output of the b conv and an input of the 1x1 c conv, both at the output resolution (BiT
    strides in b). Positions are (image_size / stride)^2, the stem's stride 4 included."""
    costs, channels = [], config.root_width
    for block, units in enumerate(config.block_units):
        width = config.bottleneck_width(block)
        for unit in range(1, units + 1):
            stride = 2 if block > 0 and unit == 1 else 1
            out_side = max(1, image_size // (4 * 2 ** block))
            in_positions, out_positions = (out_side * stride) ** 2, out_side ** 2
            costs.append((channels * in_positions + 9 * width * out_positions,
                          9 * width * out_positions + 4 * width * out_positions))
            channels = 4 * width
    return costs


def global_keep_counts(scores: list[tuple[np.ndarray, np.ndarray]], costs: list[tuple[int, int]], groups: int,
                       sparsity: float) -> list[tuple[int, int]]:
    """Channels kept per group in every unit's (a, b), for the global allocation (module docstring). `scores` are
    the channel importances of each unit's a and b outputs."""
    convs = [score for pair in scores for score in pair]
    cost = [c for pair in costs for c in pair]
    total = sum(len(score) for score in convs)
    steps_wanted = int(round(sparsity * total / groups))  # one step removes one channel from every group
    candidates = []  # (value, conv, step)
    for i, score in enumerate(convs):
        size = len(score) // groups
        ranked = np.sort((score / max(score.mean(), 1e-12)).reshape(groups, size), axis=1)  # (groups, size)
        for step in range(size - 1):  # at least one channel stays in every group
            candidates.append((float(ranked[:, step].mean()) / cost[i], i, step))
    removed = [0] * len(convs)
    # within a convolution a step is worth at least the one before it, so the cheapest steps are always prefixes
    for _, i, _ in sorted(candidates)[:steps_wanted]:
        removed[i] += 1
    keep = [len(score) // groups - r for score, r in zip(convs, removed)]
    return list(zip(keep[0::2], keep[1::2]))


def channel_scores(gamma: np.ndarray, next_kernel: np.ndarray) -> np.ndarray:
    """|GroupNorm scale| x L1 norm of the standardized weights reading each channel: (C,) from (C,), (h, w, C, O)."""
    return np.abs(gamma) * np.abs(next_kernel).sum(axis=(0, 1, 3))


def unit_scopes(config: BiTConfig) -> list[str]:
    return [f"block{block + 1}/unit{unit:02d}" for block, units in enumerate(config.block_units)
            for unit in range(1, units + 1)]


def structured_prune(config: BiTConfig, layers: dict, sparsity: float, *, allocation: str = "uniform",
                     image_size: int | None = None) -> tuple[BiTConfig, dict, dict[str, str], float]:
    """Narrow every unit's a and b convolutions. `layers` are `weights.map_tensors`' (standardized kernels);
    `allocation` and `image_size` (global: the resolution the costs are counted at) as in the module docstring.

    Returns (config with unit_widths, new layers, per-unit "a 64->32, b 64->32", fraction of bottleneck channels
    removed)."""
    layers = {scope: dict(values) for scope, values in layers.items()}
    groups = config.num_groups

    def scores(scope):  # (a channel importances, b channel importances): each read by the next GroupNorm + conv
        return tuple(channel_scores(layers[f"{scope}/{p}/group_norm"]["gamma"],
                                    layers[f"{scope}/{p}/standardized_conv2d"]["kernel"]) for p in ("b", "c"))

    if allocation == "global":
        counts = global_keep_counts([scores(scope) for scope in unit_scopes(config)],
                                    channel_costs(config, image_size or config.image_size), groups, sparsity)
    elif allocation == "uniform":
        counts = [tuple(max(1, int(round(len(s) // groups * (1.0 - sparsity)))) for s in scores(scope))
                  for scope in unit_scopes(config)]
    else:
        raise ConvertError(f"unknown allocation {allocation!r}")
    widths, report, removed, total = [], {}, 0, 0
    for scope, (count_a, count_b) in zip(unit_scopes(config), counts):
        conv = lambda p: layers[f"{scope}/{p}/standardized_conv2d"]  # noqa: E731
        norm = lambda p: layers[f"{scope}/{p}/group_norm"]  # noqa: E731
        score_a, score_b = scores(scope)
        keep_a, keep_b = keep_top(score_a, groups, count_a), keep_top(score_b, groups, count_b)
        old_a, old_b = conv("a")["kernel"].shape[3], conv("b")["kernel"].shape[3]
        conv("a")["kernel"] = conv("a")["kernel"][:, :, :, keep_a]  # (1, 1, C_in, a)
        norm("b").update(gamma=norm("b")["gamma"][keep_a], beta=norm("b")["beta"][keep_a])
        conv("b")["kernel"] = conv("b")["kernel"][:, :, keep_a][:, :, :, keep_b]  # (3, 3, a, b)
        norm("c").update(gamma=norm("c")["gamma"][keep_b], beta=norm("c")["beta"][keep_b])
        conv("c")["kernel"] = conv("c")["kernel"][:, :, keep_b]  # (1, 1, b, 4w)
        widths.append((len(keep_a), len(keep_b)))
        report[scope] = f"a {old_a}->{len(keep_a)}, b {old_b}->{len(keep_b)}"
        removed += old_a - len(keep_a) + old_b - len(keep_b)
        total += old_a + old_b
    return dataclasses.replace(config, unit_widths=tuple(widths)), layers, report, removed / total


# ---- magnitude ------------------------------------------------------------------------------------------------

def prunable_layer_names(model, prune_ends: bool) -> list[str]:
    """The standardized convolutions, without the stem conv and the head unless `prune_ends`."""
    from liteship.convert.bit.train import StandardizedConv2D

    names = [layer.name for layer in model.layers if isinstance(layer, StandardizedConv2D)]
    if not prune_ends:
        return [n for n in names if not n.startswith("root_block")]
    return names + ["head__conv2d"]


def wrap_for_pruning(model, names: list[str], options: P.PruneOptions):
    import tensorflow_model_optimization as tfmot
    import tf_keras

    params = P.pruning_params(options)

    def wrap(layer):
        if layer.name in names:
            return tfmot.sparsity.keras.prune_low_magnitude(layer, **params)
        return layer

    return tf_keras.models.clone_model(model, clone_function=wrap)


def one_shot_magnitude(model, names: list[str], sparsity: float):
    """A copy of the model with the smallest `sparsity` of each named kernel zeroed at once: the 'after pruning'
    figure (the real run prunes gradually while it fine-tunes)."""
    import tf_keras

    copy = tf_keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for name in names:
        layer = copy.get_layer(name)
        kernel = layer.kernel.numpy()
        k = int(round(sparsity * kernel.size))
        if k:
            threshold = np.sort(np.abs(kernel), axis=None)[k - 1]
            layer.kernel.assign(np.where(np.abs(kernel) <= threshold, 0.0, kernel))
    return copy


# ---- quantization-aware training ------------------------------------------------------------------------------

def learned_fake_quant(x, low, high):
    """8-bit asymmetric fake quantization of `x` to [low, high] whose range learns by gradient (LSQ's idea).

    The forward value is TensorFlow's fake_quant_with_min_max_vars, which nudges the range so that zero lies on the
    grid exactly as the int8 converter does, so the trained model sees what the bundle will compute. Its own
    gradient for the range counts only the clipped values (they want a wider range); the surrogate here, rounding
    passed straight through, adds each value's rounding error (every other value wants a finer step, so a
    narrower range): a range can then shrink and clip an outlier when the rest of the tensor gains more than the
    outlier loses."""
    import tensorflow as tf

    exact = tf.quantization.fake_quant_with_min_max_vars(x, low, high, num_bits=8)
    step = tf.maximum((high - low) / 255.0, 1e-12)
    levels = tf.clip_by_value((x - low) / step, 0.0, 255.0)
    surrogate = (levels + tf.stop_gradient(tf.round(levels) - levels)) * step + low
    return surrogate + tf.stop_gradient(exact - surrogate)


# A learned range is low0 * exp(gain * a), high0 * exp(gain * b) with a, b trained (from 0) and gain =
# RANGE_LOG_RATE / learning rate. Adam moves a weight by about the learning rate per step, so a range's log moves
# by about RANGE_LOG_RATE per step whatever the weights' learning rate, and keeps its sign (low <= 0 <= high, which
# int8 needs): 300 steps can shrink a range up to e^6 times where the gradient keeps agreeing.
RANGE_LOG_RATE = 0.02
RANGE_PARTS = ("low0", "high0", "log_low", "log_high", "gain")


def learned_range(weights: dict):
    """(low, high) tensors of one learned range from its variables (RANGE_PARTS)."""
    import tensorflow as tf

    gain = weights["gain"]
    return (weights["low0"] * tf.exp(gain * weights["log_low"]), weights["high0"] * tf.exp(gain * weights["log_high"]))


def quantize_aware(model, sample: np.ndarray | None = None, *, learning_rate: float = 1e-4):
    """TFMOT quantize_model for BiT, with learned activation ranges where the int8 bundle quantizes activations.

    Weights: the standardized convolutions (StandardizedKernelQuantizer) and the Dense head per output channel,
    symmetric, as the int8 converter quantizes them. Activations: every convolution, ReLU, residual Add, the
    pooled features and the logits get a learned range (learned_fake_quant), and so do each GroupNorm's two inner
    tensors that carry gamma (GroupNorm.internals: a channel with a large gamma sets their int8 scale, which
    TFMOT's output quantizers never see). The GroupNorm output itself is not quantized: int8 fuses the ReLU after
    it, so that tensor does not exist in the bundle. Padding and max-pool keep their input's range, as in int8;
    the model input gets TFMOT's input quantizer. `learned_range_values` reads the ranges back, for the checkpoint.

    With `sample` (N, S, S, 3) images every range starts at what the float model produces on them, as calibration
    would set it (TFMOT's own start, [-6, 6], would clip BiT's residual stream)."""
    import tensorflow_model_optimization as tfmot
    import tf_keras

    from liteship.convert.bit.model import GroupNorm
    from liteship.convert.bit.train import StandardizedConv2D, masked_standardize

    quantizers = tfmot.quantization.keras.quantizers
    gain = RANGE_LOG_RATE / learning_rate

    class LearnedRangeQuantizer(quantizers.Quantizer):
        def __init__(self, gain: float):
            self.gain = gain

        def build(self, tensor_shape, name, layer):
            start = {"low0": -6.0, "high0": 6.0, "log_low": 0.0, "log_high": 0.0, "gain": self.gain}
            return {part: layer.add_weight(f"{name}_{part}", shape=(), trainable=part.startswith("log"),
                                           initializer=tf_keras.initializers.Constant(start[part]))
                    for part in RANGE_PARTS}

        def __call__(self, inputs, training, weights, **kwargs):
            return learned_fake_quant(inputs, *learned_range(weights))

        def get_config(self):
            return {"gain": self.gain}

    class StandardizedKernelQuantizer(quantizers.LastValueQuantizer):
        """Standardize, then fake-quantize per output channel: int8 sees the standardized kernel, so that is
        what must carry the rounding."""

        def __call__(self, inputs, training, weights, **kwargs):
            return super().__call__(masked_standardize(inputs, StandardizedConv2D.epsilon), training, weights,
                                    **kwargs)

    def per_channel_weights():
        return dict(num_bits=8, per_axis=True, symmetric=True, narrow_range=True)

    class OutputConfig(tfmot.quantization.keras.QuantizeConfig):
        """No weights; the output gets a learned range."""

        def __init__(self, gain: float):
            self.gain = gain

        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return [LearnedRangeQuantizer(self.gain)]

        def get_config(self):
            return {"gain": self.gain}

    class ConvConfig(OutputConfig):
        def get_weights_and_quantizers(self, layer):
            return [(layer.kernel, StandardizedKernelQuantizer(**per_channel_weights()))]

        def set_quantize_weights(self, layer, quantize_weights):
            layer.kernel = quantize_weights[0]
            layer.prestandardized = True

    class DenseConfig(OutputConfig):
        def get_weights_and_quantizers(self, layer):
            return [(layer.kernel, quantizers.LastValueQuantizer(**per_channel_weights()))]

        def set_quantize_weights(self, layer, quantize_weights):
            layer.kernel = quantize_weights[0]

    class PassConfig(OutputConfig):
        """No quantizer: a GroupNorm (its ranges are inside, see below), or an op int8 runs at its input's scale."""

        def get_output_quantizers(self, layer):
            return []

    # The paddings and the max-pool are annotated too: TFMOT would otherwise put an EMA output quantizer on each
    # unannotated layer that feeds an annotated one, a second rounding the bundle does not have.
    configs = ((StandardizedConv2D, ConvConfig), (GroupNorm, PassConfig), (tf_keras.layers.Dense, DenseConfig),
               (tf_keras.layers.ReLU, OutputConfig), (tf_keras.layers.Add, OutputConfig),
               (tf_keras.layers.GlobalAveragePooling2D, OutputConfig),
               ((tf_keras.layers.ZeroPadding2D, tf_keras.layers.MaxPool2D), PassConfig))

    def annotate(layer):
        for kind, config in configs:
            if isinstance(layer, kind):
                return tfmot.quantization.keras.quantize_annotate_layer(layer, config(gain))
        return layer

    annotated = tf_keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    scope = {"StandardizedConv2D": StandardizedConv2D, "GroupNorm": GroupNorm, "ConvConfig": ConvConfig,
             "PassConfig": PassConfig, "OutputConfig": OutputConfig, "DenseConfig": DenseConfig}
    with tfmot.quantization.keras.quantize_scope(scope):
        qat = tfmot.quantization.keras.quantize_apply(annotated)
    for wrapper in qat.layers:  # the GroupNorms' inner ranges: variables of the wrapper, applied by the layer
        inner = getattr(wrapper, "layer", None)
        if isinstance(inner, GroupNorm):
            quantizer = LearnedRangeQuantizer(gain)
            ranges = {site: quantizer.build((), site, wrapper) for site in ("scale", "scaled")}
            inner.quantize_internal = lambda site, tensor, q=quantizer, r=ranges: q(tensor, True, r[site])
    if sample is not None:
        set_activation_ranges(qat, model, sample)
    return qat


def _range_variables(wrapper) -> dict[str, dict]:
    """{range name ("output", "scale", "scaled"): {part: variable}} of a quantize wrapper's learned ranges."""
    found: dict[str, dict] = {}
    for variable in wrapper.weights:
        short = variable.name.split("/")[-1].split(":")[0]
        for part in RANGE_PARTS:
            if short.endswith("_" + part):
                found.setdefault(short[:-len(part) - 1], {})[part] = variable
    return {name: parts for name, parts in found.items() if set(parts) == set(RANGE_PARTS)}


def _site(layer_name: str, range_name: str) -> str:
    """The checkpoint's name for a range (weights.QAT_RANGES_PREFIX): the layer's output, or layer.inner_tensor."""
    return layer_name if range_name == "output" else f"{layer_name}.{range_name}"


def learned_range_values(qat_model) -> dict[str, tuple[float, float]]:
    """{site: (low, high)} of every learned range of a `quantize_aware` model, as trained."""
    values = {}
    for wrapper in qat_model.layers:
        inner = getattr(wrapper, "layer", None)
        if inner is None:
            continue
        for name, parts in _range_variables(wrapper).items():
            low, high = learned_range(parts)
            values[_site(inner.name, name)] = (float(low.numpy()), float(high.numpy()))
    return values


def float_ranges(float_model, sample: np.ndarray, *, batch_size: int = 8) -> dict[str, tuple[float, float]]:
    """{site: (min, max)} the float model produces on `sample` (N, S, S, 3), widened to contain 0: every layer's
    output by its name, each GroupNorm's inner tensors as "name.scale" / "name.scaled", and the input as "input"."""
    import tf_keras

    from liteship.convert.bit.model import GroupNorm

    layers = [layer for layer in float_model.layers if not isinstance(layer, tf_keras.layers.InputLayer)]
    norms = [layer for layer in layers if isinstance(layer, GroupNorm)]
    probe = tf_keras.Model(float_model.inputs, [layer.output for layer in layers] + [n.input for n in norms])
    low: dict[str, float] = {"input": min(float(sample.min()), 0.0)}
    high: dict[str, float] = {"input": max(float(sample.max()), 0.0)}

    def see(site, value):
        low[site] = min(low.get(site, 0.0), float(np.min(value)))
        high[site] = max(high.get(site, 0.0), float(np.max(value)))

    for start in range(0, len(sample), batch_size):  # a batch at a time: every activation of a big BiT is large
        outputs = probe(sample[start:start + batch_size], training=False)
        for layer, value in zip(layers, outputs[:len(layers)]):
            see(layer.name, value)
        for norm, value in zip(norms, outputs[len(layers):]):
            for name, inner in norm.internals(value).items():
                see(_site(norm.name, name), inner)
    return {site: (low[site], high[site]) for site in low}


def set_activation_ranges(qat_model, float_model, sample: np.ndarray) -> None:
    """Start every range of the QAT model (the learned ones, TFMOT's output_* / post_activation_* ones and the
    input's) at what the float model produces on `sample` (float_ranges)."""
    ranges = float_ranges(float_model, sample)
    for wrapper in qat_model.layers:
        inner = getattr(wrapper, "layer", None)
        if inner is None and type(wrapper).__name__ == "QuantizeLayer":  # TFMOT's quantizer of the model input
            low, high = ranges["input"]
            for variable in wrapper.weights:
                short = variable.name.split("/")[-1].split(":")[0]
                if short.endswith("_min"):
                    variable.assign(low)
                elif short.endswith("_max"):
                    variable.assign(high)
            continue
        if inner is None:
            continue
        for name, parts in _range_variables(wrapper).items():
            site = _site(inner.name, name)
            if site in ranges:
                parts["low0"].assign(ranges[site][0])
                parts["high0"].assign(ranges[site][1])
                parts["log_low"].assign(0.0)
                parts["log_high"].assign(0.0)
        if inner.name not in ranges:
            continue
        low, high = ranges[inner.name]
        for variable in wrapper.weights:
            short = variable.name.split("/")[-1].split(":")[0]
            if short in ("output_min", "post_activation_min"):
                variable.assign(low)
            elif short in ("output_max", "post_activation_max"):
                variable.assign(high)


def dequantized_float_model(qat_model, config: BiTConfig, image_size: int):
    """The float training model holding the QAT model's trained weights (the quantize wrappers' own variables,
    the ranges, are not part of it: learned_range_values reads those)."""
    from liteship.convert.bit.train import training_model

    model = training_model(config, image_size)
    by_name = {}
    for layer in qat_model.layers:  # a wrapper lists the inner layer's variables under the inner layer's name
        inner = getattr(layer, "layer", layer).name
        by_name[inner] = {w.name.split("/")[-1].split(":")[0]: w for w in layer.weights
                          if w.name.startswith(inner + "/")}
    for layer in model.layers:
        if layer.weights:
            values = by_name[layer.name]
            layer.set_weights([values[w.name.split("/")[-1].split(":")[0]].numpy() for w in layer.weights])
    return model


# ---- the run --------------------------------------------------------------------------------------------------

def tflite_accuracy(tflite: bytes, x: np.ndarray, y: np.ndarray) -> float:
    from liteship.runtime.classify import dequantize, quantize
    from liteship.runtime.interpreter import create_interpreter

    with tempfile.TemporaryDirectory(prefix="liteship-prune-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(tflite)
        runner = create_interpreter(path).get_signature_runner()
        (name, details), = runner.get_input_details().items()
        (out_name, out_details), = runner.get_output_details().items()
        logits = np.concatenate([dequantize(runner(**{name: quantize(image[None], details)})[out_name],
                                            out_details) for image in x])  # (N, num_classes)
    return float(np.mean(logits.argmax(-1) == y))


def convert_checkpoint(checkpoint, size: int, quant, calibration, preprocessing) -> bytes:
    from liteship.convert.bit.export import calibration_dataset, checkpoint_to_tflite

    rep = calibration_dataset(calibration, preprocessing) if quant.needs_calibration else None
    tflite, _ = checkpoint_to_tflite(checkpoint, quant, image_size=size, representative_dataset=rep)
    return tflite


def prune_bit(source: str | Path, out: str | Path, data: str | Path, options: P.PruneOptions, *,
              variant: str = "R50x1", image_size: int | None = None, input_range: str | None = None,
              convert: bool = True, progress=None) -> dict:
    """Prune (or only QAT-fine-tune, method "none") a BiT checkpoint on the user's image folder and write the
    result to `out` as a BiT .npz with its pruning record beside it. Returns the record."""
    from liteship.convert.bit.export import load_checkpoint, preprocessing_block
    from liteship.convert.bit.train import (
        accuracy,
        checkpoint_tensors,
        fine_tune,
        model_from_layers,
        read_image_folder,
        save_npz,
    )
    from liteship.convert.quant import Quant

    say = progress or (lambda message: None)
    quant = Quant.parse(options.quant)
    started = time.perf_counter()
    P.check_out(out, source, folder=False)  # before the fine-tuning it would otherwise throw away
    say(f"reading {source}")
    checkpoint = load_checkpoint(source, variant, input_range=input_range, image_size=image_size)
    config, size = checkpoint.config, image_size or checkpoint.config.image_size
    preprocessing = preprocessing_block(size, checkpoint.input_range)
    say(f"reading images from {data}")
    images = read_image_folder(data, config.num_classes, preprocessing)  # wrong data fails here, before training
    say(f"{len(images.x_train)} training / {len(images.x_test)} held-out images in {len(images.classes)} classes")

    model = model_from_layers(config, checkpoint.layers, size)
    quality = {"before": accuracy(model, images.x_test, images.y_test)}
    params_before = int(sum(v.size for values in checkpoint.layers.values() for v in values.values()))
    layer_report: dict = {}
    pruned_names: list[str] = []
    callbacks = [P.progress_callback(options.steps)]
    new_config = config
    if options.method == "structured":
        new_config, layers, layer_report, removed = structured_prune(config, checkpoint.layers, options.sparsity,
                                                                     allocation=options.allocation, image_size=size)
        model = model_from_layers(new_config, layers, size)
        quality["after_pruning"] = accuracy(model, images.x_test, images.y_test)
    elif options.method == "magnitude":
        pruned_names = prunable_layer_names(model, options.prune_embeddings)
        if not options.m_by_n:
            quality["after_pruning"] = accuracy(one_shot_magnitude(model, pruned_names, options.sparsity),
                                                images.x_test, images.y_test)
        model = wrap_for_pruning(model, pruned_names, options)
        callbacks += P.pruning_callbacks()
    if options.qat:
        step = max(1, len(images.x_train) // QAT_RANGE_SAMPLES)  # spread over the classes (files sort by class)
        model = quantize_aware(model, images.x_train[::step][:QAT_RANGE_SAMPLES],
                               learning_rate=options.learning_rate)
    say(f"fine-tuning {options.steps} steps (batch {options.batch_size}, learning rate {options.learning_rate})")
    loss = fine_tune(model, images, steps=options.steps, learning_rate=options.learning_rate,
                     batch_size=options.batch_size, seed=options.seed, callbacks=callbacks)
    if options.method == "magnitude":
        model = P.strip_pruning(model)
    ranges = {}
    if options.qat:
        quality["fake_quantized"] = accuracy(model, images.x_test, images.y_test)  # what int8 should come close to
        ranges = learned_range_values(model)
        model = dequantized_float_model(model, new_config, size)
    quality["after_fine_tuning"] = accuracy(model, images.x_test, images.y_test)
    tensors = checkpoint_tensors(model, new_config)
    params_after = int(sum(v.size for v in tensors.values()))
    tensors |= W.qat_range_arrays(ranges)

    if options.method == "magnitude":
        kernels = {name.replace("__", "/"): tensors[W.PREFIX + name.replace("__", "/") + "/kernel"]
                   for name in pruned_names}
        layer_report = {name: f"sparsity {P.zero_fraction([k]):.4f}" for name, k in kernels.items()}
        sparsity = {"measured": P.zero_fraction(kernels.values()), "of": "weights of the pruned layers"}
    elif options.method == "structured":
        sparsity = {"measured": removed, "of": "bottleneck channels"}
    else:
        sparsity = {"measured": 0.0, "of": "nothing pruned"}
    report = {"family": FAMILY, "method": options.method, "sparsity": sparsity, "layers": layer_report,
              "params": {"before": params_before, "after": params_after},
              "metric": "accuracy", "quality": quality, "fine_tuning": {"steps": options.steps, "final_loss": loss},
              "qat": options.qat, "qat_ranges": len(ranges), "unit_widths": [list(w) for w in new_config.unit_widths or ()] or None}

    with P.staged_output(out, source, folder=False) as staged:
        save_npz(tensors, staged)
        if convert:
            say(f"converting before and after ({quant.value}) to measure size and accuracy")
            pruned = load_checkpoint(staged, variant, input_range=checkpoint.input_range)
            before = convert_checkpoint(checkpoint, size, quant, data, preprocessing)
            after = convert_checkpoint(pruned, size, quant, data, preprocessing)
            quality["after_conversion"] = tflite_accuracy(after, images.x_test, images.y_test)
            report["tflite"] = {"quant": quant.value, "before": P.tflite_sizes(before),
                                "after": P.tflite_sizes(after)}
        report["seconds"] = round(time.perf_counter() - started, 1)
        record = P.make_record(options, family=FAMILY, source=str(source), weights_file=staged, report=report)
        P.sidecar_path(staged).write_text(json.dumps(record, indent=2) + "\n")
    say(P.format_report(record))
    return record

