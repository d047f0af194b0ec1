"""Images -> model input arrays, exactly as a bundle's "preprocessing" block says.

Pillow decodes (imported lazily, `pip install liteship[vision]`); everything after decoding is numpy, so the
result does not depend on the Pillow version and matches what TensorFlow did at training time.

The "preprocessing" block (written by the converters, read here, never guessed)::

    {"image_size": [H, W],          # model input size
     "resize": "bilinear",          # tf.image.resize(method="bilinear", antialias=False), half-pixel centres
     "crop": "none" | "center",     # "center": resize to resize_to, then cut the central image_size window
     "resize_to": [H, W],           # only with crop == "center"
     "mean": [m, m, m], "std": [s, s, s],   # normalized = (pixel / 255 - mean) / std, per channel
     "input_range": [-1, 1] | [0, 1],       # informational; gives mean/std when they are absent
     "channels": "RGB", "layout": "NHWC"}

Decisions, so that a device gives the answer training gave:

- Resize is TensorFlow 2's bilinear *without* antialiasing (the BiT input pipeline calls `tf.image.resize`, whose
  default is antialias=False). Pillow's BILINEAR is different: when shrinking it widens its filter to cover every
  source pixel (antialiasing), which gives visibly different inputs for large downscales. We do not use it.
- Transparent pixels are composited over white (what an image viewer shows). TensorFlow's
  `decode_png(channels=3)` instead drops alpha and keeps whatever colour sits under it; the two agree on opaque
  pixels, which is all that photos and training sets contain.
- EXIF orientation is applied (a phone's portrait JPEG is classified upright).
- 16-bit images keep their precision: values are scaled by 255 / 65535 into the same [0, 255] float range as 8-bit.
  Pillow itself reads 16-bit *colour* PNGs as 8-bit (it keeps the high byte); 16-bit greyscale stays 16-bit.
- JPEG: Pillow decodes with libjpeg's accurate integer IDCT, bit-identical to
  `tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE")`. TensorFlow's *default* decode_jpeg uses the fast IDCT, which
  differs by at most a few levels (mean under 1/255); if a model was trained on that, the runtime is that close.
- Greyscale, palette, CMYK, 1-bit, ... become RGB through Pillow's own conversions. Animated files use frame 0.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from liteship.errors import BundleError, RuntimeLiteshipError

ImageSource = Union[str, os.PathLike, bytes, np.ndarray, "PIL.Image.Image"]  # noqa: F821

WHITE = 255.0  # the background transparent pixels are composited over, in [0, 255]

# Pillow modes that carry alpha (after a palette image with a transparency chunk is expanded to RGBA).
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Pillow modes whose numpy array holds 16-bit samples; scaled by 255 / 65535.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError as exc:
        raise RuntimeLiteshipError(
            "decoding images needs Pillow, which is not installed: pip install 'liteship[vision]'"
        ) from exc
    return Image, ImageOps


# --------------------------------------------------------------------------------------------------- decoding


def load_image(source: ImageSource, *, name: str | None = None) -> np.ndarray:
    """Decode a file, bytes, PIL image or array to an (H, W, 3) float32 RGB array of pixel values in [0, 255].

    See `decode_pixels` for what is accepted.
    """
    return decode_pixels(source, name=name).astype(np.float32, copy=False)


def decode_pixels(source: ImageSource, *, name: str | None = None) -> np.ndarray:
    """Like `load_image`, but an 8-bit opaque image stays uint8 (H, W, 3): a 12-megapixel photo is 36 MB rather
    than 144 MB until the resize, which converts only the rows it samples. Same values either way.

    numpy arrays are taken as pixels: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); uint8 as is, uint16 scaled by
    255 / 65535, bool as 0 / 255, floats as already in [0, 255]. Anything that is not an image raises
    RuntimeLiteshipError naming it.
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, name or "array")
    Image, ImageOps = _pil()
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, ImageOps)
    label = name or (f"{len(source)} bytes" if isinstance(source, (bytes, bytearray)) else os.fspath(source))
    try:
        if isinstance(source, (bytes, bytearray)):
            handle = Image.open(io.BytesIO(source))
        else:
            handle = Image.open(source)
        with handle as image:
            image.load()  # decode now: a truncated file fails here, inside the try, not later
            return _pil_to_rgb(image, ImageOps)
    except FileNotFoundError:
        raise RuntimeLiteshipError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise RuntimeLiteshipError(f"{label}: is a folder, not an image") from None
    except Image.DecompressionBombError as exc:
        raise RuntimeLiteshipError(f"{label}: refused, too many pixels to decode safely ({exc})") from None
    except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated/corrupt data as OSError/SyntaxError/ValueError depending on the codec.
        reason = "not an image Pillow can read" if isinstance(exc, Image.UnidentifiedImageError) else str(exc)
        raise RuntimeLiteshipError(f"{label}: {reason}") from None


def _pil_to_rgb(image, ImageOps) -> np.ndarray:
    image = ImageOps.exif_transpose(image)  # a copy, upright; no-op without an EXIF orientation tag
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        gray = np.asarray(image).astype(np.float32) * (255.0 / 65535.0)  # (H, W)
        return np.repeat(np.clip(gray, 0.0, 255.0)[..., None], 3, axis=-1)
    if mode == "F":  # 32-bit float (TIFF): taken as pixel values in [0, 255], like float arrays
        gray = np.clip(np.asarray(image, dtype=np.float32), 0.0, 255.0)
        return np.repeat(gray[..., None], 3, axis=-1)
    has_alpha = mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in image.info)
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)  # (H, W, 4)
        return _composite_over_white(rgba)
    return np.asarray(image.convert("RGB"))  # (H, W, 3) uint8


def _composite_over_white(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:4] / 255.0  # (H, W, 1)
    return rgba[..., :3] * alpha + WHITE * (1.0 - alpha)


def _array_to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.bool_:
        pixels = array.astype(np.float32) * 255.0
    elif array.dtype == np.uint16:
        pixels = array.astype(np.float32) * (255.0 / 65535.0)
    elif array.dtype == np.uint8:
        pixels = array  # kept 8-bit, like decoded files; the resize converts what it samples
    elif np.issubdtype(array.dtype, np.floating):
        pixels = array.astype(np.float32)
    else:
        raise RuntimeLiteshipError(f"{name}: pixel dtype {array.dtype} is not uint8, uint16, bool or float")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3, 4) or min(pixels.shape[:2]) < 1:
        raise RuntimeLiteshipError(f"{name}: shape {array.shape} is not (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if pixels.shape[-1] == 1:
        return np.repeat(pixels, 3, axis=-1)
    if pixels.shape[-1] == 4:
        return _composite_over_white(pixels.astype(np.float32))
    return pixels


# ------------------------------------------------------------------------------------------------ preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """The manifest's "preprocessing" block, validated once."""

    image_size: tuple[int, int]  # (H, W) of the model input
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "bilinear"
    crop: str = "none"
    resize_to: tuple[int, int] | None = None  # (H, W) before the centre crop
    channels: str = "RGB"
    layout: str = "NHWC"

    @classmethod
    def from_manifest(cls, block: dict | None) -> "Preprocessing":
        """Read a manifest's "preprocessing" block; a missing or inconsistent field raises BundleError."""
        if not block:
            raise BundleError("manifest has no 'preprocessing' block: the image size and normalization are unknown")
        try:
            image_size = _pair(block["image_size"], "image_size")
        except KeyError:
            raise BundleError("manifest preprocessing has no 'image_size'") from None
        mean, std = block.get("mean"), block.get("std")
        if mean is None or std is None:
            if "input_range" not in block:
                raise BundleError("manifest preprocessing has neither mean/std nor input_range")
            low, high = (float(v) for v in block["input_range"])
            if not high > low:
                raise BundleError(f"manifest preprocessing input_range {block['input_range']} is empty")
            # pixel / 255 in [0, 1] -> [low, high]: (p - mean) / std with mean = -low / (high - low), std = 1 / (high - low)
            mean, std = [-low / (high - low)] * 3, [1.0 / (high - low)] * 3
        mean, std = _triple(mean, "mean"), _triple(std, "std")
        if any(s == 0 for s in std):
            raise BundleError(f"manifest preprocessing std {list(std)} contains 0")
        crop = block.get("crop", "none") or "none"
        resize_to = block.get("resize_to")
        resize_to = _pair(resize_to, "resize_to") if resize_to is not None else None
        spec = cls(
            image_size=image_size, mean=mean, std=std, resize=block.get("resize", "bilinear"),
            crop=crop, resize_to=resize_to, channels=block.get("channels", "RGB"), layout=block.get("layout", "NHWC"),
        )
        spec._check()
        return spec

    def _check(self) -> None:
        for field, value, choices in (
            ("resize", self.resize, RESIZERS), ("crop", self.crop, _CROPS),
            ("channels", self.channels, _CHANNEL_ORDERS), ("layout", self.layout, _LAYOUTS),
        ):
            if value not in choices:
                raise BundleError(f"manifest preprocessing {field} {value!r} is not one of {sorted(choices)}")
        if self.crop == "center":
            if self.resize_to is None:
                raise BundleError("manifest preprocessing crop is 'center' but resize_to is missing")
            if self.resize_to[0] < self.image_size[0] or self.resize_to[1] < self.image_size[1]:
                raise BundleError(
                    f"manifest preprocessing resize_to {list(self.resize_to)} is smaller than "
                    f"image_size {list(self.image_size)}"
                )

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, 3) RGB pixels in [0, 255] -> one model input: (image_size..., C) or (C, image_size...) float32,
        C = 3, or 1 for channels "L"."""
        resize = RESIZERS[self.resize]
        if self.channels == "L":
            pixels = luminance(pixels)  # (H, W, 1), before resizing, as a training pipeline's convert("L") does
        if self.crop == "center":
            resized = resize(pixels, self.resize_to)  # (Rh, Rw, 3)
            top = (self.resize_to[0] - self.image_size[0]) // 2  # the odd pixel goes to the bottom/right
            left = (self.resize_to[1] - self.image_size[1]) // 2
            resized = resized[top : top + self.image_size[0], left : left + self.image_size[1]]
        else:
            resized = resize(pixels, self.image_size)  # (H, W, 3)
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        if self.channels == "L":  # one grey channel, as the converter writes for (H, W, 1) inputs
            mean, std = mean[:1], std[:1]  # the first mean/std value
        normalized = (resized / np.float32(255.0) - mean) / std
        normalized = normalized[..., _CHANNEL_ORDERS[self.channels]]
        return np.ascontiguousarray(_LAYOUTS[self.layout](normalized), dtype=np.float32)


def luminance(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W, 1) gray exactly as Pillow's convert("L"): ITU-R 601-2 weights in 16-bit fixed
    point, rounded, for uint8 pixels; the same weights, rounded, for float pixels."""
    if pixels.dtype == np.uint8:
        p = pixels.astype(np.uint32)
        gray = (p[..., 0] * 19595 + p[..., 1] * 38470 + p[..., 2] * 7471 + 0x8000) >> 16
        return gray.astype(np.uint8)[..., None]
    return np.rint(np.asarray(pixels, np.float32) @ LUMA_WEIGHTS)[..., None]


def preprocess(source: ImageSource, preprocessing: Preprocessing | dict, *, name: str | None = None) -> np.ndarray:
    """Decode and preprocess one image: the model input for it, without the batch dimension."""
    spec = preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing.from_manifest(preprocessing)
    return spec(decode_pixels(source, name=name))


def resize_bilinear(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) -> (h, w, C) like TF2 `tf.image.resize(method="bilinear", antialias=False)`.

    Half-pixel centres: output pixel i samples the source at (i + 0.5) * H / h - 0.5, clamped to the edges, and
    blends its two neighbours linearly. No antialiasing, so a large shrink skips source pixels (as TF does).
    """
    pixels = np.asarray(pixels)  # uint8 or float32; only the sampled rows are converted to float32
    rows, row_weight = _bilinear_taps(pixels.shape[0], size[0])
    cols, col_weight = _bilinear_taps(pixels.shape[1], size[1])
    top = pixels[rows[0]].astype(np.float32)  # (h, W, C): only the rows we need
    bottom = pixels[rows[1]].astype(np.float32)
    ry = row_weight[:, None, None]
    vertical = top + (bottom - top) * ry  # (h, W, C)
    left, right = vertical[:, cols[0]], vertical[:, cols[1]]  # (h, w, C)
    return left + (right - left) * col_weight[None, :, None]


def _bilinear_taps(in_size: int, out_size: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    # float32 like TF's kernel, so the blend weights (and results) agree to the last bits
    scale = np.float32(in_size) / np.float32(out_size)
    centre = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)  # source coordinate
    floor = np.floor(centre)
    lower = np.clip(floor, 0, in_size - 1).astype(np.intp)
    upper = np.clip(np.ceil(centre), 0, in_size - 1).astype(np.intp)
    weight = centre - floor
    return (lower, upper), weight


# Declarative tables: a manifest value -> what it means here. An unknown value is a BundleError (see _check).
RESIZERS = {"bilinear": resize_bilinear}
_CROPS = frozenset({"none", "center"})
_CHANNEL_ORDERS = {"RGB": [0, 1, 2], "BGR": [2, 1, 0], "L": [0]}
# RGB -> grey with Pillow's own "L" weights (ITU-R 601-2 luma): a grey PNG decoded to RGB comes back unchanged.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
_LAYOUTS = {"NHWC": lambda hwc: hwc, "NCHW": lambda hwc: np.transpose(hwc, (2, 0, 1))}


def _pair(value, field: str) -> tuple[int, int]:
    try:
        if isinstance(value, (int, float)):
            value = [value, value]
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise BundleError(f"manifest preprocessing {field} {value!r} is not [H, W]") from None
    if h < 1 or w < 1:
        raise BundleError(f"manifest preprocessing {field} {value!r} is not positive")
    return h, w


def _triple(value, field: str) -> tuple[float, float, float]:
    try:
        if isinstance(value, (int, float)):
            value = [value] * 3
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise BundleError(f"manifest preprocessing {field} {value!r} is not 3 numbers") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise BundleError(f"manifest preprocessing {field} {list(values)} is not 3 numbers")
    return values  # type: ignore[return-value]


def iter_files(path: str | os.PathLike) -> list[Path]:
    """Every file under a folder (recursively, sorted, hidden files and folders left out), or [path] for a file.

    Suffixes are not filtered: a file that is not an image is decoded, fails, and is reported by the caller.
    """
    root = Path(path)
    if not root.exists():
        raise RuntimeLiteshipError(f"{root}: no such file or folder")
    if root.is_file():
        return [root]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return found
