"""Seeded, bounded fuzzing of the files users hand to liteship: random bit flips and truncations of a lone
.tflite, a bundle's manifest.json and a BiT .npz checkpoint. Whatever the damage, the CLI answers (exit 0 or 1)
or refuses in one line: never a traceback, an internal error, or a death by signal (a crash in native code).

LITESHIP_FUZZ_SEED and LITESHIP_FUZZ_COUNT change the seed and the number of mutants per file; the fast run tries
a few, the slow one more."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.cli.harness import cli_env, last_line, run

SEED = int(os.environ.get("LITESHIP_FUZZ_SEED", "20261201"))


def mutants(data: bytes, count: int, seed: int):
    """(description, bytes): half bit flips (1 to 8 bits anywhere), half truncations; deterministic per seed."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        buf = bytearray(data)
        if i % 2 == 0:
            flips = int(rng.integers(1, 9))
            positions = rng.integers(0, len(buf), size=flips)
            for pos in positions:
                buf[pos] ^= 1 << int(rng.integers(0, 8))
            yield f"flip {flips} bit(s) at {sorted(int(p) for p in positions)}", bytes(buf)
        else:
            cut = int(rng.integers(0, len(buf)))
            yield f"truncate to {cut} of {len(buf)} bytes", bytes(buf[:cut])


def assert_survives(result, what: str) -> None:
    where = f"{what}\n--- stderr ---\n{result.stderr[-2000:]}"
    assert result.returncode >= 0, f"killed by signal {-result.returncode}: {where}"
    assert result.returncode in (0, 1), f"exit {result.returncode}: {where}"
    assert "Traceback" not in result.stderr, where
    assert "internal error" not in result.stderr, where
    if result.returncode == 1:
        assert last_line(result.stderr).startswith("error: "), where


def fuzz_count(fast: int, slow: bool) -> int:
    return int(os.environ.get("LITESHIP_FUZZ_COUNT", 24 if slow else fast))


def _fuzz_tflite(fixture_bundles, tmp_path, count):
    original = (fixture_bundles / "classifier-fp32" / "model.tflite").read_bytes()
    np.save(tmp_path / "x.npy", np.random.default_rng(0).uniform(0, 1, (12, 12, 3)).astype(np.float32))
    for i, (what, data) in enumerate(mutants(original, count, SEED)):
        model = tmp_path / f"m{i}.tflite"
        model.write_bytes(data)
        assert_survives(run(["inspect", model], tmp_path), f"inspect, {what}")
        assert_survives(run(["run", "model", model, "--input", tmp_path / "x.npy"], tmp_path), f"run model, {what}")


def _fuzz_manifest(fixture_bundles, tmp_path, count):
    original = (fixture_bundles / "classifier-fp32" / "manifest.json").read_bytes()
    for i, (what, data) in enumerate(mutants(original, count, SEED + 1)):
        bundle = tmp_path / f"b{i}"
        shutil.copytree(fixture_bundles / "classifier-fp32", bundle)
        (bundle / "manifest.json").write_bytes(data)
        assert_survives(run(["inspect", bundle], tmp_path), f"inspect, manifest {what}")
        np.save(tmp_path / "x.npy", np.zeros((12, 12, 3), np.float32))
        assert_survives(run(["run", "model", bundle, "--input", tmp_path / "x.npy"], tmp_path),
                        f"run model, manifest {what}")


def _fuzz_npz(fixture_bundles, tmp_path, count):
    from tests.convert.bit_fixtures import write_bit_npz  # noqa: PLC0415 - TensorFlow-free, but only for this test

    original_path = write_bit_npz(tmp_path / "bit.npz")
    original = original_path.read_bytes()
    for i, (what, data) in enumerate(mutants(original, count, SEED + 2)):
        ckpt = tmp_path / f"c{i}.npz"
        ckpt.write_bytes(data)
        result = run(["convert", "bit", ckpt, "--variant", "tiny", "--out", tmp_path / f"out{i}"], tmp_path)
        assert_survives(result, f"convert bit, npz {what}")
    assert not list(Path(cli_env(tmp_path)["TMPDIR"]).glob("liteship-*")), "temporary folders left behind"


@pytest.mark.parametrize("target", ["tflite", "manifest"])
def test_fuzz_few(target, fixture_bundles, tmp_path):
    {"tflite": _fuzz_tflite, "manifest": _fuzz_manifest}[target](fixture_bundles, tmp_path, fuzz_count(4, False))


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tflite", "manifest", "npz"])
def test_fuzz_many(target, fixture_bundles, tmp_path):
    {"tflite": _fuzz_tflite, "manifest": _fuzz_manifest, "npz": _fuzz_npz}[target](
        fixture_bundles, tmp_path, fuzz_count(4, True))
