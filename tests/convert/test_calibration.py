"""Calibration data: shapes, stacks, and an even spread when a limit applies."""

from __future__ import annotations

import numpy as np
import pytest

from liteship.convert.calibration import collect_samples
from liteship.errors import ConvertError

SPEC = {"shape": [-1, 4, 4, 3], "dtype": "float32"}


def test_one_sample_a_stack_and_a_batched_stack(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 4, 3), np.float32))
    np.save(tmp_path / "b.npy", np.ones((5, 4, 4, 3), np.float32))
    np.save(tmp_path / "c.npy", np.ones((2, 1, 4, 4, 3), np.float32))
    samples = collect_samples(tmp_path, SPEC)
    assert len(samples) == 1 + 5 + 2 and all(s.shape == (1, 4, 4, 3) for s in samples)


def test_wrong_shape_names_the_file(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((3, 5, 5, 3), np.float32))
    with pytest.raises(ConvertError, match=r"bad.npy has shape \(3, 5, 5, 3\); the model input expects \?x4x4x3"):
        collect_samples(tmp_path, SPEC)


def test_limit_spreads_over_every_class_folder(tmp_path):
    """Regression: a limit took the first N sorted files, i.e. the first classes only."""
    for cls in range(10):
        d = tmp_path / f"class{cls}"
        d.mkdir()
        for i in range(20):
            np.save(d / f"{i:02d}.npy", np.full((4, 4, 3), cls, np.float32))
    samples = collect_samples(tmp_path, SPEC, limit=30)
    assert len(samples) == 30
    assert {int(s[0, 0, 0, 0]) for s in samples} == set(range(10))


def test_empty_and_missing(tmp_path):
    with pytest.raises(ConvertError, match="no calibration samples"):
        collect_samples(tmp_path, SPEC)
    with pytest.raises(ConvertError, match="does not exist"):
        collect_samples(tmp_path / "nope", SPEC)
