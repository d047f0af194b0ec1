"""BiT re-authored in tf_keras (Keras 2), shaped for TFLite and XNNPACK.

The architecture is BiT's pre-activation ResNetV2 (google-research/big_transfer, bit_tf2/models.py):

    stem:  pad 3 -> conv 7x7/2 (VALID) -> pad 1 with zeros -> max-pool 3x3/2 (VALID)      (no norm, no ReLU)
    unit:  y = relu(GN_a(x));  shortcut = proj(y) if the shape changes else x
           y = conv1x1(y);  y = conv3x3/stride(pad 1, relu(GN_b(y)));  y = conv1x1(relu(GN_c(y)))
           out = y + shortcut                                           (the stride sits on the 3x3 conv)
    head:  relu(GN(x)) -> global mean -> dense (BiT's head is a 1x1 conv on the pooled features)

Two things differ from the published code, both exact re-expressions rather than approximations:
- Convolution kernels arrive already weight-standardized (`weights.standardize_kernel`, done once at export), so
  the graph holds plain CONV_2D ops instead of recomputing mean/var of every kernel on every inference.
- GroupNorm is lowered to ops XNNPACK delegates and int8 handles (see `GroupNorm` and docs/bit_groupnorm.md).

Layer names are the npz scopes with "/" replaced by "__" so `weights.py` maps names one-to-one.
Import this module only where TensorFlow is wanted: it imports tf_keras at the top.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

from liteship.convert.bit.config import BiTConfig
from liteship.errors import ConvertError

GROUPNORM_LOWERINGS = ("channelmean", "matmul", "reshape", "keras5d")


def _group_matrices(channels: int, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, G) averaging matrix and (G, C) indicator that broadcasts a group value back to its channels."""
    group_size = channels // groups
    member = np.repeat(np.eye(groups, dtype=np.float32), group_size, axis=0)  # (C, G), 1 where channel c is in g
    return member / group_size, member.T.copy()


class GroupNorm(tf_keras.layers.Layer):
    """GroupNorm over NHWC with per-channel gamma/beta, in one of four TFLite lowerings (docs/bit_groupnorm.md).

    - "channelmean" (default): per-channel spatial MEAN over H, W (a global average pool, which XNNPACK and every
      int8 kernel handle), then the grouping on that small (N, 1, 1, C) tensor: reshape to (N, 1, G, C/G), MEAN
      over the last axis, and a MUL by a (1, 1, G, C/G) constant that copies each group's value back to its
      channels. Variance is two-pass (mean of squared deviations), which keeps int8 ranges small. The big tensor
      is never reshaped and only sees MEAN, SUB, MUL, ADD.
    - "matmul": the same, but the grouping is two small FULLY_CONNECTED ops with fixed (C, G) / (G, C) matrices.
      As fast in fp32, but on a trained BiT the int8 converter gave the per-channel scale gamma * rsqrt(var) the
      int8 range of the normalized output (a ~100x too coarse step), costing ~7% logit cosine; kept to compare.
    - "reshape": 4-D reshape of the big tensor to (N, H*W, G, C/G) and MEAN over axes (1, 3). Accurate in int8
      but ~2x slower under XNNPACK (non-contiguous reductions over the big tensor).
    - "keras5d": tf_keras.layers.GroupNormalization's 5-D reshape + moments; the baseline. Not pure int8 (SQUARE).
    """

    def __init__(self, groups: int = 32, epsilon: float = 1e-5, lowering: str = "channelmean", **kwargs):
        super().__init__(**kwargs)
        if lowering not in GROUPNORM_LOWERINGS:
            raise ConvertError(f"unknown GroupNorm lowering {lowering!r}; choose one of {', '.join(GROUPNORM_LOWERINGS)}")
        self.groups = groups
        self.epsilon = epsilon
        self.lowering = lowering
        # quantization-aware training sets this to fake-quantize the inner tensors (convert/bit/prune.py): a
        # callable (site, tensor) -> tensor; None in the exported model, whose graph it then leaves as it is
        self.quantize_internal = None

    def build(self, input_shape):
        channels = int(input_shape[-1])
        if channels % self.groups:
            raise ConvertError(f"GroupNorm {self.name}: {channels} channels do not split into {self.groups} groups")
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")
        average, indicator = _group_matrices(channels, self.groups)
        self._average = tf.constant(average)  # (C, G)
        self._indicator = tf.constant(indicator)  # (G, C)
        super().build(input_shape)

    def _group_mean_per_channel(self, per_channel):
        """(N, 1, 1, C) per-channel values -> (N, 1, 1, C) mean over each channel's group."""
        channels = per_channel.shape[-1]
        flat = tf.reshape(per_channel, (-1, channels))  # (N, C)
        per_group = tf.matmul(flat, self._average)  # (N, G)
        back = tf.matmul(per_group, self._indicator)  # (N, C)
        return tf.reshape(back, (-1, 1, 1, channels))

    def _group_mean(self, per_channel):
        """(N, 1, 1, C) per-channel values -> (N, 1, G, 1) means over each group, a MEAN on the small tensor."""
        channels = per_channel.shape[-1]
        grouped = tf.reshape(per_channel, (-1, 1, self.groups, channels // self.groups))  # (N, 1, G, C/G)
        return tf.reduce_mean(grouped, axis=3, keepdims=True)  # (N, 1, G, 1)

    def _to_channels(self, per_group, weights):
        """(N, 1, G, 1) * (1, 1, G, C/G) weights -> (N, 1, 1, C): copies each group's value to its channels."""
        return tf.reshape(per_group * weights, (-1, 1, 1, weights.shape[2] * weights.shape[3]))

    def call(self, x):
        if self.lowering == "channelmean":
            channels = x.shape[-1]
            ones = tf.ones((1, 1, self.groups, channels // self.groups))
            gamma = tf.reshape(self.gamma, (1, 1, self.groups, channels // self.groups))
            mean = self._to_channels(self._group_mean(tf.reduce_mean(x, axis=[1, 2], keepdims=True)), ones)
            centered = x - mean  # (N, H, W, C)
            var = self._group_mean(tf.reduce_mean(centered * centered, axis=[1, 2], keepdims=True))  # (N, 1, G, 1)
            # gamma rides on the copy to channels, in the small grouped layout: the converter would otherwise
            # reassociate gamma * rsqrt * centered and give the (N, 1, 1, C) scale the int8 range of the output
            scale = self._to_channels(tf.math.rsqrt(var + self.epsilon), gamma)  # (N, 1, 1, C)
            scale = self._quantize("scale", scale)
            return self._quantize("scaled", centered * scale) + self.beta  # (N, H, W, C)
        if self.lowering == "matmul":
            mean = self._group_mean_per_channel(tf.reduce_mean(x, axis=[1, 2], keepdims=True))  # (N, 1, 1, C)
            centered = x - mean  # (N, H, W, C)
            var = self._group_mean_per_channel(
                tf.reduce_mean(centered * centered, axis=[1, 2], keepdims=True))  # (N, 1, 1, C)
            scale = self.gamma * tf.math.rsqrt(var + self.epsilon)  # (N, 1, 1, C)
            return centered * scale + self.beta
        if self.lowering == "reshape":
            _, height, width, channels = x.shape
            grouped = tf.reshape(x, (-1, height * width, self.groups, channels // self.groups))  # (N, HW, G, C/G)
            mean = tf.reduce_mean(grouped, axis=[1, 3], keepdims=True)  # (N, 1, G, 1)
            centered = grouped - mean
            var = tf.reduce_mean(centered * centered, axis=[1, 3], keepdims=True)  # (N, 1, G, 1)
            normed = tf.reshape(centered * tf.math.rsqrt(var + self.epsilon), (-1, height, width, channels))
            return normed * self.gamma + self.beta
        _, height, width, channels = x.shape  # keras5d: what tf_keras.layers.GroupNormalization does
        grouped = tf.reshape(x, (-1, height, width, self.groups, channels // self.groups))  # (N, H, W, G, C/G)
        mean, var = tf.nn.moments(grouped, axes=[1, 2, 4], keepdims=True)
        normed = tf.reshape((grouped - mean) * tf.math.rsqrt(var + self.epsilon), (-1, height, width, channels))
        return normed * self.gamma + self.beta

    def _quantize(self, site: str, tensor):
        return tensor if self.quantize_internal is None else self.quantize_internal(site, tensor)

    def internals(self, x) -> dict:
        """The channelmean lowering's two inner tensors that carry gamma, by site name: "scale" (N, 1, 1, C), the
        per-channel gamma * rsqrt(var), and "scaled" (N, H, W, C), the centred input times it. A channel with a
        large gamma sets the int8 range of both; quantization-aware training gives each its own range."""
        if self.lowering != "channelmean":
            raise ConvertError(f"GroupNorm {self.name}: inner ranges exist for the channelmean lowering only")
        found = {}
        hook, self.quantize_internal = self.quantize_internal, lambda site, tensor: found.setdefault(site, tensor)
        try:
            self.call(x)
        finally:
            self.quantize_internal = hook
        return found

    def get_prunable_weights(self):
        """tfmot's pruning hook (duck-typed, so no tfmot import): gamma/beta are per-channel scales, never pruned.
        With it, `prune_low_magnitude(model)` wraps the whole BiT and prunes only the convolutions and the head."""
        return []

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "epsilon": self.epsilon, "lowering": self.lowering}


def layer_name(scope: str) -> str:
    """Keras layer name for an npz scope: "block1/unit01/a/group_norm" -> "block1__unit01__a__group_norm"."""
    return scope.replace("/", "__")


def _conv(x, filters, kernel, stride, scope):
    return tf_keras.layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=False,
                                  name=layer_name(scope))(x)


def _gn_relu(x, config, scope, lowering):
    x = GroupNorm(config.num_groups, config.gn_epsilon, lowering, name=layer_name(scope))(x)
    return tf_keras.layers.ReLU(name=layer_name(scope) + "__relu")(x)


def _unit(x, config: BiTConfig, width: int, stride: int, scope: str, lowering: str,
          mid: tuple[int, int] | None = None):
    """One pre-activation bottleneck unit; the output has 4 * width channels. `mid` is the (a, b) conv width,
    `width` unless structured pruning narrowed the unit."""
    width_a, width_b = mid or (width, width)
    shortcut = x
    y = _gn_relu(x, config, f"{scope}/a/group_norm", lowering)
    if stride != 1 or x.shape[-1] != 4 * width:
        shortcut = _conv(y, 4 * width, 1, stride, f"{scope}/a/proj/standardized_conv2d")  # (N, H/s, W/s, 4w)
    y = _conv(y, width_a, 1, 1, f"{scope}/a/standardized_conv2d")
    y = _gn_relu(y, config, f"{scope}/b/group_norm", lowering)
    # BiT pads 1 on every side and convolves VALID; for stride 2 on even sizes that is not Keras "same" (0, 1).
    y = tf_keras.layers.ZeroPadding2D(1, name=layer_name(scope) + "__b__pad")(y)
    y = _conv(y, width_b, 3, stride, f"{scope}/b/standardized_conv2d")  # (N, H/s, W/s, w_b)
    y = _gn_relu(y, config, f"{scope}/c/group_norm", lowering)
    y = _conv(y, 4 * width, 1, 1, f"{scope}/c/standardized_conv2d")
    return tf_keras.layers.Add(name=layer_name(scope) + "__add")([y, shortcut])


def build_model(config: BiTConfig, *, image_size: int | None = None, groupnorm: str = "channelmean",
                batch_size: int | None = 1) -> "tf_keras.Model":
    """Functional tf_keras BiT taking normalized NHWC float images and returning logits (N, num_classes).

    Weights are random until `weights.load_into(model, tensors)`; kernels are expected pre-standardized.
    """
    size = image_size or config.image_size
    if size < 32:
        raise ConvertError(f"BiT image size must be at least 32 pixels (five stride-2 stages), got {size}")
    inputs = tf_keras.Input((size, size, 3), batch_size=batch_size, name="image")
    x = tf_keras.layers.ZeroPadding2D(3, name="root_block__pad")(inputs)
    x = _conv(x, config.root_width, 7, 2, "root_block/standardized_conv2d")  # (N, S/2, S/2, 64wf)
    # Zero padding (not -inf as in a "same" max-pool): BiT pads the un-normalized stem output with zeros.
    x = tf_keras.layers.ZeroPadding2D(1, name="root_block__pool_pad")(x)
    x = tf_keras.layers.MaxPool2D(3, strides=2, padding="valid", name="root_block__pool")(x)  # (N, S/4, S/4, 64wf)
    for block, units in enumerate(config.block_units):
        width = config.bottleneck_width(block)
        for unit in range(1, units + 1):
            stride = 2 if block > 0 and unit == 1 else 1
            x = _unit(x, config, width, stride, f"block{block + 1}/unit{unit:02d}", groupnorm,
                      config.mid_widths(block, unit))
    x = _gn_relu(x, config, "group_norm", groupnorm)  # (N, S/32, S/32, feature_width)
    x = tf_keras.layers.GlobalAveragePooling2D(name="pool")(x)  # (N, feature_width)
    x = tf_keras.layers.Dense(config.num_classes, name=layer_name("head/conv2d"))(x)  # (N, num_classes)
    logits = tf_keras.layers.Activation("linear", name="logits")(x)  # names the signature output; adds no op
    return tf_keras.Model(inputs, logits, name="bit")
