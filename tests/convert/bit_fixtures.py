"""Tiny BiT checkpoints in the original npz naming, and real test images, for the BiT tests and benchmarks.

The names here are written out independently of convert/bit/weights.py, following the released
google-research/big_transfer loaders, so a typo in the converter's name table cannot hide behind a shared helper.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liteship.convert.bit.config import BiTConfig, tiny


def bit_tensors(config: BiTConfig | None = None, *, num_classes: int | None = None, seed: int = 0
                ) -> dict[str, np.ndarray]:
    """Random weights for `config` keyed like BiT-M-R50x1.npz ("resnet/block1/unit01/a/group_norm/gamma", ...).

    Kernels are He-normal and deliberately NOT standardized, with a per-filter offset, so a converter that forgot
    weight standardization produces visibly different outputs. GroupNorm gamma ~ 1 +- 0.2 and beta ~ +-0.1 so that
    the affine part matters too.
    """
    config = config or tiny()
    classes = num_classes or config.num_classes
    rng = np.random.default_rng(seed)
    wf = config.width_factor
    tensors: dict[str, np.ndarray] = {}

    def kernel(name, h, w, cin, cout):
        value = rng.normal(0.0, np.sqrt(2.0 / (h * w * cin)), (h, w, cin, cout))
        value += rng.normal(0.0, 0.05, (1, 1, 1, cout))  # non-zero filter means: standardization must remove them
        tensors[f"resnet/{name}/standardized_conv2d/kernel"] = value.astype(np.float32)

    def norm(name, c):
        tensors[f"resnet/{name}/group_norm/gamma"] = (1.0 + 0.2 * rng.standard_normal(c)).astype(np.float32)
        tensors[f"resnet/{name}/group_norm/beta"] = (0.1 * rng.standard_normal(c)).astype(np.float32)

    root = config.base_width * wf
    kernel("root_block", 7, 7, 3, root)
    cin = root
    for b, units in enumerate(config.block_units, start=1):
        mid = config.base_width * wf * 2 ** (b - 1)
        for u in range(1, units + 1):
            unit = f"block{b}/unit{u:02d}"
            norm(f"{unit}/a", cin)
            if u == 1:  # every block's first unit changes the channel count (and, after block1, the stride)
                kernel(f"{unit}/a/proj", 1, 1, cin, 4 * mid)
            kernel(f"{unit}/a", 1, 1, cin, mid)
            norm(f"{unit}/b", mid)
            kernel(f"{unit}/b", 3, 3, mid, mid)
            norm(f"{unit}/c", mid)
            kernel(f"{unit}/c", 1, 1, mid, 4 * mid)
            cin = 4 * mid
    norm("", cin)
    tensors = {name.replace("resnet//", "resnet/"): value for name, value in tensors.items()}
    tensors["resnet/head/conv2d/kernel"] = rng.normal(0.0, 0.05, (1, 1, cin, classes)).astype(np.float32)
    tensors["resnet/head/conv2d/bias"] = rng.normal(0.0, 0.1, (classes,)).astype(np.float32)
    return tensors


def write_bit_npz(path: str | Path, config: BiTConfig | None = None, *, num_classes: int | None = None,
                  seed: int = 0, drop: tuple[str, ...] = (), extra: dict[str, np.ndarray] | None = None,
                  override: dict[str, np.ndarray] | None = None) -> Path:
    """Save `bit_tensors` as an .npz like the released checkpoints; `drop`/`extra`/`override` make bad ones."""
    tensors = bit_tensors(config, num_classes=num_classes, seed=seed)
    for name in drop:
        del tensors[name]
    tensors.update(extra or {})
    tensors.update(override or {})
    path = Path(path)
    np.savez(path, **tensors)
    return path


def sample_images(size: int, names=("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")
                  ) -> np.ndarray:
    """Real RGB photos shipped with scikit-image, resized to (size, size): uint8 (N, size, size, 3)."""
    from PIL import Image
    from skimage import data

    images = []
    for name in names:
        image = getattr(data, name)()
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        resized = Image.fromarray(image[..., :3]).resize((size, size), Image.BILINEAR)
        images.append(np.asarray(resized, dtype=np.uint8))
    return np.stack(images)


def write_image_folder(folder: str | Path, size: int | None = None, names=None) -> Path:
    """PNG files of `sample_images` (or originals when size is None) for --calibration style folders."""
    from PIL import Image
    from skimage import data

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = names or ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
    for name in names:
        image = getattr(data, name)()
        if size:
            image = np.asarray(Image.fromarray(image[..., :3]).resize((size, size), Image.BILINEAR))
        Image.fromarray(image[..., :3]).save(folder / f"{name}.png")
    return folder


def to_bit_range(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [-1, 1], the original BiT checkpoints' input convention."""
    return (images_uint8.astype(np.float32) / 255.0 - 0.5) / 0.5


def write_hub_style_saved_model(path: str | Path, tensors: dict[str, np.ndarray], *, block_units,
                                input_range=(0.0, 1.0), head_as_dense: bool = True) -> Path:
    """A TF Hub-style BiT classifier SavedModel: raw variables named like bit_tf2's ("resnet/...:0"), a __call__
    taking images in `input_range` and mapping them to [-1, 1] itself, weight standardization and GroupNorm
    computed in-graph as the released TF2 code does. A third, plain-TF implementation of BiT, for testing the
    SavedModel source path of the converter.
    """
    import tensorflow as tf

    class HubBiT(tf.__internal__.tracking.AutoTrackable):  # like Hub modules: a restorable `.variables` list
        def __init__(self):
            self.vars = {}
            for name, value in tensors.items():
                if head_as_dense and name == "resnet/head/conv2d/kernel":
                    name, value = "resnet/head/dense/kernel", value[0, 0]
                elif head_as_dense and name == "resnet/head/conv2d/bias":
                    name = "resnet/head/dense/bias"
                self.vars[name] = tf.Variable(value, name=name)
            self.variables = list(self.vars.values())

        def conv(self, x, scope, stride=1, pad=0):
            w = self.vars[f"resnet/{scope}/standardized_conv2d/kernel"]
            mean, var = tf.nn.moments(w, axes=[0, 1, 2], keepdims=True)
            w = (w - mean) / tf.sqrt(var + 1e-10)
            if pad:
                x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
            return tf.nn.conv2d(x, w, stride, "VALID")

        def gn_relu(self, x, scope):
            shape = tf.shape(x)  # height and width are dynamic: Hub modules take any image size
            c = x.shape[-1]
            g = tf.reshape(x, tf.concat([shape[:3], [32, c // 32]], 0))  # (N, H, W, 32, C/32)
            mean, var = tf.nn.moments(g, axes=[1, 2, 4], keepdims=True)
            x = tf.reshape((g - mean) / tf.sqrt(var + 1e-5), shape)
            return tf.nn.relu(x * self.vars[f"resnet/{scope}group_norm/gamma"]
                              + self.vars[f"resnet/{scope}group_norm/beta"])

        @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
        def __call__(self, images):
            low, high = input_range
            x = (images - low) / (high - low) * 2.0 - 1.0  # the module's own input convention -> BiT's [-1, 1]
            x = self.conv(x, "root_block", 2, 3)
            x = tf.nn.max_pool2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), 3, 2, "VALID")
            for b, units in enumerate(block_units, start=1):
                for u in range(1, units + 1):
                    unit = f"block{b}/unit{u:02d}"
                    stride = 2 if b > 1 and u == 1 else 1
                    pre = self.gn_relu(x, f"{unit}/a/")
                    shortcut = self.conv(pre, f"{unit}/a/proj", stride) if u == 1 else x
                    y = self.conv(pre, f"{unit}/a")
                    y = self.conv(self.gn_relu(y, f"{unit}/b/"), f"{unit}/b", stride, 1)
                    y = self.conv(self.gn_relu(y, f"{unit}/c/"), f"{unit}/c")
                    x = y + shortcut
            x = tf.reduce_mean(self.gn_relu(x, ""), axis=[1, 2])
            if head_as_dense:
                return x @ self.vars["resnet/head/dense/kernel"] + self.vars["resnet/head/dense/bias"]
            return x @ self.vars["resnet/head/conv2d/kernel"][0, 0] + self.vars["resnet/head/conv2d/bias"]

    module = HubBiT()
    path = Path(path)
    tf.saved_model.save(module, str(path))
    return path
