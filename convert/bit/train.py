"""Fine-tuning a BiT checkpoint on the user's images, in tf_keras, and writing the result back as a BiT .npz.

Training needs what export does not: weight standardization computed in the graph (BiT trains that way, and the
gradient must see it), a batch axis left open, and the user's image folder read as arrays. Pruning
(convert/bit/prune.py) builds on this; the .npz written here is what `liteship convert bit` reads.
Imports tf_keras at the top: import it only where TensorFlow is wanted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras

from liteship.convert.bit import weights as W
from liteship.convert.bit.config import BiTConfig
from liteship.convert.bit.model import build_model, layer_name
from liteship.convert.calibration import IMAGE_SUFFIXES
from liteship.errors import ConvertError, LiteshipError

HOLDOUT_EVERY = 5  # every 5th image of each class (sorted by name) is held out to measure accuracy
MIN_TRAIN_PER_CLASS = 1


def masked_standardize(kernel, epsilon: float):
    """BiT's weight standardization that keeps pruned (exactly zero) weights at zero.

    Plain standardization maps a zero to -mean/std, which would undo magnitude pruning at export. Here the mean is
    taken over the kept weights and only they are shifted, then every filter is scaled to unit variance over all
    its H*W*I entries. The result has mean 0 and variance 1 per filter with its zeros in place, so it is a fixed
    point of `weights.standardize_kernel`: saved as the raw kernel, the converter's standardization returns it
    unchanged (to float rounding). With no zeros it is exactly the released code's standardization.
    """
    mask = tf.stop_gradient(tf.cast(tf.not_equal(kernel, 0.0), kernel.dtype))  # (kh, kw, I, O)
    kept = tf.maximum(tf.reduce_sum(mask, axis=[0, 1, 2], keepdims=True), 1.0)  # (1, 1, 1, O)
    mean = tf.reduce_sum(kernel * mask, axis=[0, 1, 2], keepdims=True) / kept
    centered = (kernel - mean) * mask
    var = tf.reduce_mean(centered * centered, axis=[0, 1, 2], keepdims=True)  # over all entries, zeros included
    return centered * tf.math.rsqrt(var + epsilon)


class StandardizedConv2D(tf_keras.layers.Conv2D):
    """A Conv2D that standardizes its kernel on every call, as BiT's StandardizedConv2D does in training.

    TFMOT's registry knows Conv2D but not a subclass, so this is a PrunableLayer by its get_prunable_weights
    (duck-typed, as TFMOT accepts). `prestandardized` is set by the QAT config (convert/bit/prune.py), whose weight
    quantizer hands over a kernel that is already standardized and fake-quantized."""

    epsilon = 1e-10  # BiTConfig.ws_epsilon, the released code's var + 1e-10
    prestandardized = False

    def convolution_op(self, inputs, kernel):
        if not self.prestandardized:
            kernel = masked_standardize(kernel, self.epsilon)
        return super().convolution_op(inputs, kernel)

    def get_prunable_weights(self):
        return [self.kernel]


def training_model(config: BiTConfig, image_size: int):
    """liteship's tf_keras BiT with the Conv2D layers swapped for weight-standardizing ones (same names)."""
    exported_layout = build_model(config, image_size=image_size, batch_size=None)

    def clone(layer):
        if type(layer) is tf_keras.layers.Conv2D:
            return StandardizedConv2D.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    return tf_keras.models.clone_model(exported_layout, clone_function=clone)


def model_from_layers(config: BiTConfig, layers: dict, image_size: int):
    """The training model holding a checkpoint's mapped weights (kernels standardized: a fixed point)."""
    model = training_model(config, image_size)
    W.load_into(model, layers)
    return model


def checkpoint_tensors(model, config: BiTConfig) -> dict[str, np.ndarray]:
    """The model's weights in the BiT release naming ("resnet/block1/..."), kernels as the effective (standardized,
    zeros kept) ones, which the converter's standardization leaves as they are."""
    by_name = {layer.name: layer for layer in model.layers}
    tensors = {}
    for name, target in W.expected_tensors(config).items():
        layer = by_name.get(layer_name(target.layer_scope))
        if layer is None:
            raise ConvertError(f"the fine-tuned model has no layer for {target.layer_scope!r}")
        (variable,) = [w for w in layer.weights if w.name.split("/")[-1].split(":")[0] == target.weight]
        value = variable.numpy()
        if isinstance(layer, StandardizedConv2D):
            value = masked_standardize(tf.constant(value), config.ws_epsilon).numpy()
        if name == W.HEAD_KERNEL:
            value = W.head_kernel_dense_to_hwio(value)  # Dense (C, N) -> the release's 1x1 conv (1, 1, C, N)
        if value.shape != target.shape:
            raise ConvertError(f"{name}: the fine-tuned model has shape {value.shape}, expected {target.shape}")
        tensors[W.PREFIX + name] = value.astype(np.float32)
    return tensors


def save_npz(tensors: dict[str, np.ndarray], path: Path) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a temporary name
        np.savez(f, **tensors)


# ---- the user's images -------------------------------------------------------------------------------------

@dataclass
class ImageData:
    classes: list[str]  # sorted class folder names; index = label
    x_train: np.ndarray  # (N, S, S, 3) float32, preprocessed as the bundle will
    y_train: np.ndarray  # (N,) int
    x_test: np.ndarray
    y_test: np.ndarray


def read_image_folder(folder: str | Path, num_classes: int, preprocessing: dict) -> ImageData:
    """An image folder with one sub-folder per class, checked against the head before any training.

    Classes are the sub-folders in sorted order (label 0 is the first), as Keras' image_dataset_from_directory
    orders them; there must be exactly as many as the checkpoint's head has outputs."""
    from liteship.runtime.images import preprocess

    folder = Path(folder)
    if not folder.is_dir():
        raise ConvertError(f"--data {folder}: not a folder (BiT wants one sub-folder of images per class)")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) != num_classes:
        raise ConvertError(f"--data {folder} has {len(classes)} class folders but the checkpoint's head has "
                           f"{num_classes} classes (one sub-folder of images per class)")
    train, test = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).rglob("*") if p.is_file() and not p.name.startswith("."))
        others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if others:
            raise ConvertError(f"--data: {others[0]} is not an image ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if len(files) < MIN_TRAIN_PER_CLASS + 1:
            raise ConvertError(f"--data: class folder {folder / name} has {len(files)} images; each class needs "
                               f"at least {MIN_TRAIN_PER_CLASS + 1} (one is held out to measure accuracy)")
        held = set(files[HOLDOUT_EVERY - 1::HOLDOUT_EVERY] or files[-1:])
        train += [(path, label) for path in files if path not in held]
        test += [(path, label) for path in files if path in held]

    def arrays(items):
        xs = []
        for path, _ in items:
            try:
                xs.append(preprocess(path, preprocessing))
            except LiteshipError as err:
                raise ConvertError(f"--data: {err}") from None
        return np.stack(xs).astype(np.float32), np.array([label for _, label in items], np.int64)

    x_train, y_train = arrays(train)
    x_test, y_test = arrays(test)
    return ImageData(classes, x_train, y_train, x_test, y_test)


# ---- fine-tuning -------------------------------------------------------------------------------------------

def fine_tune(model, data: ImageData, *, steps: int, learning_rate: float, batch_size: int, seed: int,
              callbacks=()) -> float | None:
    """`steps` Adam steps on random batches of the training images; returns the last loss (None for 0 steps)."""
    if steps == 0:
        return None
    tf_keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.integers(0, len(data.x_train), size=steps * batch_size)  # (steps * B,) sampled with replacement
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(data.x_train[order], data.y_train[order], batch_size=batch_size, epochs=1, shuffle=False,
                        verbose=0, callbacks=list(callbacks))
    return float(history.history["loss"][-1])


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    logits = model.predict(x, batch_size=64, verbose=0)  # (N, num_classes)
    return float(np.mean(logits.argmax(-1) == y))
