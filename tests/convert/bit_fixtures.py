"""Tiny BiT checkpoints in the original npz naming, and real test images, for BiT tests (B1 and B2 import these).

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
