"""BiT checkpoint naming and strict loading (numpy only: no TensorFlow needed)."""

from __future__ import annotations

import numpy as np
import pytest

from liteship.convert.bit import weights as W
from liteship.convert.bit.config import PRESETS, get_config, tiny
from liteship.errors import ConvertError
from tests.convert.bit_fixtures import bit_tensors, write_bit_npz


def _mapped(tensors, config):
    named = W.normalize_names(tensors, "test.npz")
    return W.map_tensors(named, config.replace(num_classes=W.num_classes_of(named, "test.npz")), "test.npz")


@pytest.mark.parametrize("variant", ["R50x1", "R101x1", "R152x2"])
def test_name_table_equals_released_naming(variant):
    # The fixture spells names out independently, after google-research/big_transfer's loaders.
    config = get_config(variant).replace(num_classes=5)
    expected = {W.PREFIX + name for name in W.expected_tensors(config)}
    shapes = {W.PREFIX + name: target.shape for name, target in W.expected_tensors(config).items()}
    fixture_names = set(_fixture_shapes(config))
    assert expected == fixture_names
    assert shapes == _fixture_shapes(config)


def _fixture_shapes(config):
    """Shapes of the fixture tensors without allocating R152 weights: run the fixture on a base_width-1 twin."""
    small = config.replace(base_width=1)
    scale = config.base_width
    shapes = {}
    for name, value in bit_tensors(small, num_classes=config.num_classes).items():
        shape = list(value.shape)
        if name.endswith("kernel"):
            shape[-1] = shape[-1] * scale if not name.startswith("resnet/head") else shape[-1]
            if not name.startswith("resnet/root_block"):
                shape[-2] *= scale
        elif not name.startswith("resnet/head"):
            shape[0] *= scale
        shapes[name] = tuple(shape)
    return shapes


def test_r50x1_parameter_count_matches_published_size():
    # timm's resnetv2_50x1_bit.goog_in21k card: 68.3M parameters with the 21843-class head.
    config = get_config("BiT-M-R50x1").replace(num_classes=21843)
    params = sum(int(np.prod(t.shape)) for t in W.expected_tensors(config).values())
    assert params == pytest.approx(68.3e6, rel=0.005)


def test_standardize_kernel_matches_bit_formula():
    rng = np.random.default_rng(1)
    kernel = rng.normal(0.3, 2.0, (3, 3, 8, 4)).astype(np.float32)
    out = W.standardize_kernel(kernel)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)  # per output filter, over H, W, I
    np.testing.assert_allclose(out.var(axis=(0, 1, 2)), 1.0, rtol=1e-5)
    # a constant filter has zero variance: eps 1e-10 keeps it finite (zeros), as in BiT
    assert np.all(np.isfinite(W.standardize_kernel(np.ones((1, 1, 4, 2), np.float32))))


def test_head_of_any_size_sets_num_classes():
    tensors = bit_tensors(tiny(), num_classes=7)
    named = W.normalize_names(tensors, "x.npz")
    assert W.num_classes_of(named, "x.npz") == 7
    layers = _mapped(tensors, tiny())
    assert layers["head/conv2d"]["kernel"].shape == (tiny().feature_width, 7)  # (1, 1, C, N) -> (C, N)


def test_mapped_kernels_are_standardized_and_gn_untouched():
    tensors = bit_tensors(tiny())
    layers = _mapped(tensors, tiny())
    kernel = layers["block2/unit01/b/standardized_conv2d"]["kernel"]
    np.testing.assert_allclose(kernel.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_array_equal(layers["block2/unit01/b/group_norm"]["gamma"],
                                  tensors["resnet/block2/unit01/b/group_norm/gamma"])


def test_missing_tensor_is_named(tmp_path):
    name = "resnet/block3/unit01/b/group_norm/beta"
    tensors = bit_tensors(tiny())
    del tensors[name]
    with pytest.raises(ConvertError, match=f"missing tensor '{name}'"):
        _mapped(tensors, tiny())


def test_wrong_shape_is_named():
    name = "resnet/block2/unit01/a/standardized_conv2d/kernel"
    tensors = bit_tensors(tiny())
    tensors[name] = np.zeros((1, 1, 128, 65), np.float32)
    with pytest.raises(ConvertError, match=rf"tensor '{name}' has shape \(1, 1, 128, 65\), expected \(1, 1, 128, 64\)"):
        _mapped(tensors, tiny())


def test_unmapped_tensor_is_named():
    tensors = bit_tensors(tiny())
    tensors["resnet/block5/unit01/a/group_norm/gamma"] = np.ones(8, np.float32)
    with pytest.raises(ConvertError, match="unmapped tensor 'resnet/block5/unit01/a/group_norm/gamma'"):
        _mapped(tensors, tiny())


def test_tensor_outside_resnet_scope_is_rejected():
    tensors = bit_tensors(tiny())
    tensors["global_step"] = np.zeros((), np.int64)
    with pytest.raises(ConvertError, match="unexpected tensor 'global_step'"):
        _mapped(tensors, tiny())


def test_wrong_variant_is_a_shape_or_unmapped_error():
    tensors = bit_tensors(tiny())  # 1 unit per block; R50x1 wants 3/4/6/3 and 64-wide stem
    with pytest.raises(ConvertError, match="resnet/.*R50x1"):
        _mapped(tensors, get_config("R50x1"))


def test_missing_head_says_why():
    tensors = bit_tensors(tiny())
    del tensors["resnet/head/conv2d/bias"]
    with pytest.raises(ConvertError, match="missing tensor 'resnet/head/conv2d/bias'.*classification head"):
        W.num_classes_of(W.normalize_names(tensors, "x.npz"), "x.npz")


def test_bit_tf2_dense_head_alias():
    tensors = bit_tensors(tiny())
    kernel = tensors.pop("resnet/head/conv2d/kernel")
    tensors["resnet/head/dense/kernel:0"] = kernel[0, 0]  # (C, N) as bit_tf2 / Hub name it
    tensors["resnet/head/dense/bias:0"] = tensors.pop("resnet/head/conv2d/bias")
    layers = _mapped(tensors, tiny())
    np.testing.assert_array_equal(layers["head/conv2d"]["kernel"], kernel[0, 0])


def test_unknown_variant_lists_choices():
    with pytest.raises(ConvertError, match="unknown BiT variant 'R51x1'.*R50x1, R101x1, R50x3, R101x3, R152x2, R152x4"):
        get_config("R51x1")
    assert get_config("BiT-S-R101x3") == PRESETS["R101x3"]
    assert get_config("bit-m-r50x1") == PRESETS["R50x1"]


def test_unreadable_and_absent_files(tmp_path):
    bad = tmp_path / "not.npz"
    bad.write_text("hello")
    with pytest.raises(ConvertError, match="not a readable .npz"):
        W.read_npz(bad)
    with pytest.raises(ConvertError, match="not found"):
        W.read_npz(tmp_path / "absent.npz")


def test_npz_round_trip(tmp_path):
    path = write_bit_npz(tmp_path / "tiny.npz", tiny(), num_classes=3)
    tensors = W.read_npz(path)
    assert tensors["resnet/head/conv2d/bias"].shape == (3,)
    assert len(tensors) == 45  # 1 stem + 4 units x (3 convs + proj + 3 GN x 2) + pre-head GN x 2 + head x 2
