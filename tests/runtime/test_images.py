"""Decoding and preprocessing of images, checked against TensorFlow's own pipeline and against hand-made pixels."""

from __future__ import annotations

import io
import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from liteship.errors import BundleError, RuntimeLiteshipError
from liteship.runtime.images import Preprocessing, iter_files, load_image, preprocess, resize_bilinear

skimage_data = pytest.importorskip("skimage.data")

BIT = {"image_size": [64, 64], "resize": "bilinear", "crop": "none", "mean": [0.5] * 3, "std": [0.5] * 3,
       "input_range": [-1, 1], "channels": "RGB", "layout": "NHWC"}


def png_bytes(array: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG", **save)
    return buffer.getvalue()


def png16_rgb(array: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = array.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16-bit, colour type 2 (RGB)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


# ---------------------------------------------------------------------------------------------- resize vs TF


@pytest.mark.parametrize("name,size", [("astronaut", (224, 224)), ("chelsea", (37, 53)), ("coffee", (400, 600)),
                                       ("camera", (700, 300))])
def test_resize_matches_tf_bilinear_without_antialias(tf, name, size):
    pixels = load_image(getattr(skimage_data, name)())
    ours = resize_bilinear(pixels, size)
    theirs = tf.image.resize(pixels, size, method="bilinear", antialias=False).numpy()
    assert ours.shape == theirs.shape == (*size, 3)
    # Both compute in float32; the blend weights can differ in the last bit. 1e-3 of a grey level (observed 5e-5)
    # is far below the 0.5 level that could change a uint8 round trip.
    np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=0)


def test_pillow_bilinear_is_the_antialiased_one_we_do_not_use():
    # Documents the intended difference: for an 8x shrink Pillow's BILINEAR averages every source pixel
    # (antialiasing), TF's (and ours) samples 4 of them. A mean gap of over 2 grey levels on a photo is the
    # observable consequence; if this ever shrank to ~0 the docstring would be wrong.
    photo = skimage_data.astronaut()
    ours = resize_bilinear(photo, (64, 64))
    pillow = np.asarray(Image.fromarray(photo).resize((64, 64), Image.BILINEAR), dtype=np.float32)
    assert np.abs(ours - pillow).mean() > 2.0


def test_preprocess_matches_a_tf_input_pipeline(tf):
    """decode_png -> resize -> center crop -> (x/255 - mean)/std, written with TF ops, equals ours."""
    photo = skimage_data.chelsea()  # (300, 451, 3)
    data = png_bytes(photo)
    block = dict(BIT, image_size=[48, 40], crop="center", resize_to=[56, 49], mean=[0.485, 0.456, 0.406],
                 std=[0.229, 0.224, 0.225])
    ours = preprocess(data, block)

    image = tf.cast(tf.io.decode_png(data, channels=3), tf.float32)
    image = tf.image.resize(image, (56, 49), method="bilinear", antialias=False)
    image = tf.image.crop_to_bounding_box(image, (56 - 48) // 2, (49 - 40) // 2, 48, 40)
    image = (image / 255.0 - tf.constant(block["mean"])) / tf.constant(block["std"])
    assert ours.shape == (48, 40, 3) and ours.dtype == np.float32
    # Resize agrees to 1e-3 grey levels; /255/0.224 turns that into < 2e-5.
    np.testing.assert_allclose(ours, image.numpy(), atol=2e-5, rtol=0)


def test_jpeg_decoding_equals_tf_accurate_idct(tf):
    data = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(data, "JPEG", quality=90)
    ours = load_image(data.getvalue())
    accurate = tf.io.decode_jpeg(data.getvalue(), channels=3, dct_method="INTEGER_ACCURATE").numpy()
    np.testing.assert_array_equal(ours, accurate.astype(np.float32))
    # TF's default (fast IDCT) is what the docstring promises "close" for: a few levels at most, mean under 1.
    fast = tf.io.decode_jpeg(data.getvalue(), channels=3).numpy().astype(np.float32)
    assert np.abs(ours - fast).max() <= 8 and np.abs(ours - fast).mean() < 1.0


# --------------------------------------------------------------------------------------------- pixel formats


def test_grayscale_png_becomes_three_equal_channels():
    gray = skimage_data.camera()  # (512, 512) uint8
    pixels = load_image(png_bytes(gray))
    assert pixels.shape == (512, 512, 3)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], gray.astype(np.float32))


def test_rgba_is_composited_over_white():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: its colour
    rgba[0, 1] = (10, 20, 30, 0)  # transparent: white, whatever colour sits under it
    rgba[0, 2] = (0, 100, 200, 128)  # half: blend with white
    pixels = load_image(png_bytes(rgba))
    np.testing.assert_array_equal(pixels[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(pixels[0, 1], [255, 255, 255])
    alpha = 128 / 255
    np.testing.assert_allclose(pixels[0, 2], [0 * alpha + 255 * (1 - alpha), 100 * alpha + 255 * (1 - alpha),
                                              200 * alpha + 255 * (1 - alpha)], atol=1e-3)
    # the real RGBA image skimage ships decodes to a finite opaque-looking RGB array
    logo = load_image(png_bytes(skimage_data.logo()))
    assert logo.shape == (500, 500, 3) and 0 <= logo.min() and logo.max() <= 255


def test_palette_png_with_and_without_transparency():
    palette_image = Image.fromarray(skimage_data.astronaut()).convert("P", palette=Image.ADAPTIVE, colors=16)
    expected = np.asarray(palette_image.convert("RGB"), dtype=np.float32)
    np.testing.assert_array_equal(load_image(_save(palette_image)), expected)
    index_of_first = np.asarray(palette_image)[0, 0]
    transparent = _save(palette_image, transparency=int(index_of_first))
    pixels = load_image(transparent)
    np.testing.assert_array_equal(pixels[0, 0], [255, 255, 255])  # that palette entry is now see-through
    other = np.asarray(palette_image) != index_of_first
    np.testing.assert_array_equal(pixels[other], expected[other])


def _save(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **save)
    return buffer.getvalue()


def test_sixteen_bit_grayscale_keeps_precision():
    values = np.array([[0, 257, 32768, 65535]], np.uint16)
    pixels = load_image(png_bytes(values))
    np.testing.assert_allclose(pixels[0, :, 0], values[0] * 255.0 / 65535.0, atol=1e-4)
    assert pixels[0, 2, 0] == pytest.approx(127.502, abs=1e-3)  # not rounded to an 8-bit level


def test_sixteen_bit_rgb_png_decodes_to_its_high_byte():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, size=(5, 7, 3), dtype=np.uint16)
    pixels = load_image(png16_rgb(values))
    assert pixels.shape == (5, 7, 3)
    # Pillow keeps the high byte of 16-bit colour: within one 8-bit level of the exact value.
    np.testing.assert_allclose(pixels, values * 255.0 / 65535.0, atol=1.0)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied(fmt):
    photo = skimage_data.astronaut()[:120, :200]  # landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    pixels = load_image(buffer.getvalue())
    upright = np.rot90(photo, k=-1).astype(np.float32)
    assert pixels.shape == upright.shape == (200, 120, 3)
    # PNG is lossless; JPEG at quality 95 stays within a few levels on average.
    assert np.abs(pixels - upright).mean() < (1e-6 if fmt == "PNG" else 3.0)


def test_bmp_gif_and_one_bit_images():
    photo = skimage_data.chelsea()
    for fmt in ("BMP", "GIF", "TIFF", "WEBP"):
        buffer = io.BytesIO()
        Image.fromarray(photo).save(buffer, fmt)
        assert load_image(buffer.getvalue(), name=f"x.{fmt}").shape == (300, 451, 3)
    binary = Image.fromarray(skimage_data.horse())  # bool -> mode "1"
    pixels = load_image(_save(binary))
    assert set(np.unique(pixels)) <= {0.0, 255.0}


def test_arrays_are_taken_as_pixels():
    gray = np.array([[0, 255]], np.uint8)
    np.testing.assert_array_equal(load_image(gray), [[[0, 0, 0], [255, 255, 255]]])
    np.testing.assert_allclose(load_image(np.array([[65535]], np.uint16)), [[[255, 255, 255]]])
    np.testing.assert_array_equal(load_image(np.array([[True]])), [[[255, 255, 255]]])
    with pytest.raises(RuntimeLiteshipError, match="shape"):
        load_image(np.zeros((2, 2, 2), np.uint8), name="two-channel")


# ------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("content", [b"", b"hello, I am text\n", png_bytes(np.zeros((40, 40, 3), np.uint8))[:60]],
                         ids=["empty", "text", "truncated-png"])
def test_a_file_that_is_not_an_image_raises_naming_it(tmp_path, content):
    path = tmp_path / "notes.png"
    path.write_bytes(content)
    with pytest.raises(RuntimeLiteshipError, match="notes.png"):
        load_image(path)


def test_truncated_jpeg_raises(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(RuntimeLiteshipError, match="cut.jpg"):
        load_image(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(RuntimeLiteshipError, match="no such file"):
        load_image(tmp_path / "absent.png")
    with pytest.raises(RuntimeLiteshipError, match="folder"):
        load_image(tmp_path)


def test_missing_pillow_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import Image` raise ImportError
    with pytest.raises(RuntimeLiteshipError, match=r"liteship\[vision\]"):
        load_image(b"\x89PNG")


# ------------------------------------------------------------------------------------------ the manifest block


def test_normalization_and_input_range():
    white = np.full((4, 4, 3), 255, np.uint8)
    black = np.zeros((4, 4, 3), np.uint8)
    minus_one_to_one = Preprocessing.from_manifest({"image_size": [4, 4], "input_range": [-1, 1]})
    assert minus_one_to_one.mean == (0.5,) * 3 and minus_one_to_one.std == (0.5,) * 3
    np.testing.assert_allclose(minus_one_to_one(load_image(white)), 1.0)
    np.testing.assert_allclose(minus_one_to_one(load_image(black)), -1.0)
    zero_to_one = Preprocessing.from_manifest({"image_size": [4, 4], "input_range": [0, 1]})
    np.testing.assert_allclose(zero_to_one(load_image(white)), 1.0)
    imagenet = Preprocessing.from_manifest({"image_size": 4, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    np.testing.assert_allclose(imagenet(load_image(black))[0, 0], [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225],
                               rtol=1e-6)


def test_center_crop_takes_the_middle_window():
    # pixel value = column index, so the crop offset is readable from the output
    columns = np.tile(np.arange(10, dtype=np.float32), (10, 1))
    spec = Preprocessing.from_manifest({"image_size": [4, 4], "crop": "center", "resize_to": [10, 10],
                                        "mean": [0, 0, 0], "std": [1 / 255] * 3})  # identity normalization
    out = spec(load_image(columns))
    np.testing.assert_allclose(out[0, :, 0], [3, 4, 5, 6])  # (10 - 4) // 2 = 3
    odd = Preprocessing.from_manifest({"image_size": [4, 4], "crop": "center", "resize_to": [10, 9],
                                       "mean": [0] * 3, "std": [1 / 255] * 3})
    out = odd(resize_bilinear(load_image(columns), (10, 9)))  # width 9: offset 2, the odd pixel on the right
    assert out.shape == (4, 4, 3)


def test_layout_and_channel_order():
    pixel = np.array([[[10, 20, 30]]], np.uint8)
    spec = Preprocessing.from_manifest({"image_size": [1, 1], "mean": [0] * 3, "std": [1 / 255] * 3,
                                        "channels": "BGR", "layout": "NCHW"})
    out = spec(load_image(pixel))
    assert out.shape == (3, 1, 1)
    np.testing.assert_allclose(out[:, 0, 0], [30, 20, 10])


def test_grey_channel_for_single_channel_models(tmp_path):
    """The converter writes channels "L" for (H, W, 1) image inputs (a digits CNN); the runtime refused it."""
    spec = Preprocessing.from_manifest({"image_size": [2, 2], "mean": [0.5], "std": [0.25], "channels": "L"})
    grey = np.array([[0, 51], [102, 255]], np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    out = preprocess(tmp_path / "g.png", spec)
    assert out.shape == (2, 2, 1)
    np.testing.assert_allclose(out[..., 0], (grey / 255.0 - 0.5) / 0.25, rtol=1e-6)  # a grey file is unchanged
    red = np.full((2, 2, 3), [255, 0, 0], np.uint8)
    colour = spec(load_image(red))  # pure red: exactly what Pillow's convert("L") gives (76, not 0.299 * 255)
    pillow = np.asarray(Image.fromarray(red).convert("L"), np.float32)
    np.testing.assert_allclose(colour[..., 0], (pillow / 255.0 - 0.5) / 0.25, rtol=1e-6)


@pytest.mark.parametrize("block,message", [
    (None, "no 'preprocessing'"),
    ({"mean": [0] * 3, "std": [1] * 3}, "image_size"),
    ({"image_size": [8, 8]}, "mean/std"),
    (dict(BIT, resize="bicubic"), "resize 'bicubic'"),
    (dict(BIT, crop="center"), "resize_to is missing"),
    (dict(BIT, crop="center", resize_to=[32, 32]), "smaller than"),
    (dict(BIT, std=[0.5, 0, 0.5]), "contains 0"),
    (dict(BIT, layout="NHCW"), "layout"),
    (dict(BIT, image_size="big"), "image_size"),
])
def test_bad_preprocessing_blocks_raise_bundle_errors(block, message):
    with pytest.raises(BundleError, match=message):
        Preprocessing.from_manifest(block)


def test_iter_files_lists_everything_sorted_and_skips_hidden(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".git").mkdir()
    for name in ("b/2.png", "a.txt", ".hidden", "b/1.jpg", ".git/x"):
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in iter_files(tmp_path)] == ["a.txt", "b/1.jpg", "b/2.png"]
    assert iter_files(tmp_path / "a.txt") == [tmp_path / "a.txt"]
    with pytest.raises(RuntimeLiteshipError, match="no such"):
        iter_files(tmp_path / "nope")


def test_eight_bit_pixels_stay_uint8_until_the_resize_with_identical_results():
    from liteship.runtime.images import decode_pixels

    photo = skimage_data.astronaut()
    kept = decode_pixels(png_bytes(photo))
    assert kept.dtype == np.uint8  # 1 byte per sample until the resize picks its rows
    spec = Preprocessing.from_manifest(dict(BIT, image_size=[50, 70]))
    np.testing.assert_array_equal(spec(kept), spec(kept.astype(np.float32)))
