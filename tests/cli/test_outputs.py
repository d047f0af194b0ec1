"""Outputs under faults: a full or read-only disk, two runs writing one file, a killed run's leftovers, file modes,
and what `run model` says about quantized inputs and labels. Each runs the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.cli.harness import assert_failed_cleanly, cli_env, command, leftovers, run, tree_digest


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (root only); the test is skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> None:
    """Fills the file system of folder."""
    fd = os.open(folder / "ballast", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 1024):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def test_pack_on_a_full_disk_names_the_archive_and_keeps_the_old_one(fixture_bundles, tmp_path, small_disk):
    old = small_disk / "b.zip"
    old.write_bytes(b"the previous archive")
    fill(small_disk)
    result = run(["pack", fixture_bundles / "gpt2-fp32", old], tmp_path)
    assert_failed_cleanly(result, exit_code=1, names=("b.zip", "No space left"), tmp=small_disk)
    assert old.read_bytes() == b"the previous archive"


def test_convert_onto_a_full_disk_keeps_the_old_bundle(fixture_bundles, tmp_path, small_disk):
    shutil.copytree(fixture_bundles / "classifier-fp32", small_disk / "b")
    before = tree_digest(small_disk / "b")
    fill(small_disk)
    result = run(["convert", "savedmodel", fixture_bundles / "classifier-savedmodel", "--out", small_disk / "b"],
                 tmp_path)
    assert_failed_cleanly(result, exit_code=1, names=("No space left",), tmp=small_disk)
    assert tree_digest(small_disk / "b") == before


def test_read_only_outputs_are_refused_before_any_work(fixture_bundles, tmp_path, small_disk):
    np.save(tmp_path / "x.npy", np.zeros((12, 12, 3), np.float32))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    result = run(["convert", "savedmodel", fixture_bundles / "classifier-savedmodel", "--out", small_disk / "b"],
                 tmp_path)
    assert_failed_cleanly(result, exit_code=1, names=("--out", "not writable"))
    assert "converting" not in result.stderr
    result = run(["run", "model", fixture_bundles / "classifier-fp32", "--input", tmp_path / "x.npy",
                  "--output", small_disk / "o.npz"], tmp_path)
    assert_failed_cleanly(result, exit_code=1, names=("--output", "o.npz", "read-only"))


def test_two_packs_to_one_archive_both_leave_a_complete_archive(fixture_bundles, tmp_path):
    archive = tmp_path / "b.zip"
    procs = [subprocess.Popen(command("pack", fixture_bundles / name, archive), env=cli_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("classifier-fp32", "classifier-int8", "classifier-fp16")]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in results), results
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        manifest = json.loads(zf.read(next(n for n in zf.namelist() if n.endswith("manifest.json"))))
    assert manifest["quantization"] in ("fp32", "int8", "fp16")
    assert not leftovers(tmp_path)
    result = run(["inspect", archive], tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_killed_runs_leftovers_are_swept_by_the_next_run(fixture_bundles, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    tmpdir = Path(cli_env(tmp_path)["TMPDIR"])
    stale = [tmpdir / f"liteship-keras-{dead.pid}-abc", tmp_path / f".b.{dead.pid}-1234.partial",
             tmp_path / f".b.old-{dead.pid}"]
    live = [tmpdir / f"liteship-keras-{os.getpid()}-abc", tmp_path / f".b.{os.getpid()}-1234.partial"]
    for p in stale + live:
        p.mkdir()
        (p / "junk").write_text("x")
    shutil.copytree(fixture_bundles / "classifier-fp32", tmp_path / "b")
    result = run(["convert", "savedmodel", fixture_bundles / "classifier-savedmodel", "--out", tmp_path / "b"],
                 tmp_path)
    assert result.returncode == 0, result.stderr
    assert not any(p.exists() for p in stale), [p for p in stale if p.exists()]
    assert all(p.exists() for p in live), "another running process's temporary files were removed"


def test_new_bundles_are_readable_by_everyone_under_umask_022(fixture_bundles, tmp_path):
    env = cli_env(tmp_path)
    out = tmp_path / "b"
    result = subprocess.run(["sh", "-c", 'umask 022 && exec "$@"', "sh",
                             *command("convert", "savedmodel", fixture_bundles / "classifier-savedmodel", "--out",
                                      out, "--labels", fixture_bundles / "classifier-fp32" / "assets" / "labels.txt")],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert (out.stat().st_mode & 0o777) == 0o755
    for rel, mode in modes.items():
        assert mode == (0o755 if (out / rel).is_dir() else 0o644), (rel, oct(mode))


def test_run_model_quantizes_float_input_for_an_int8_input_bundle(fixture_bundles, tmp_path):
    from liteship.convert.bundle import write_bundle
    from liteship.convert.calibration import representative_dataset
    from liteship.convert.tflite import convert_saved_model

    pytest.importorskip("tensorflow")
    spec = {"shape": [-1, 12, 12, 3], "dtype": "float32"}
    rep = representative_dataset(fixture_bundles / "classifier-calibration.npy", spec)
    data, report = convert_saved_model(fixture_bundles / "classifier-savedmodel", "int8", representative_dataset=rep,
                                       io_type="uint8")
    bundle = write_bundle(tmp_path / "u8", data, family="classifier", task="image-classification",
                          quantization="int8", io_type="uint8",
                          assets={"labels": ("assets/labels.txt", b"a\nb\nc\nd\ne\n")}, conversion=report)
    ref = np.load(fixture_bundles / "classifier-fp32.reference.npz")
    x, y = ref["x"][3], ref["y"][3]
    np.save(tmp_path / "x.npy", x)
    result = run(["run", "model", bundle, "--input", tmp_path / "x.npy"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "quantized to uint8" in result.stderr and "zero point" in result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert "dequantized" in line
    values = np.array([float(v) for v in line.split("[", 2)[2].split("]")[0].split(",")])
    # the float model's logits, within int8 quantization error (a plain cast of 0..1 pixels would give ~all zeros)
    assert np.abs(values - y).max() < 0.1 * (np.abs(y).max() + 1e-6) + 0.05, (values, y)
    assert f"argmax {int(np.argmax(y))} ({'abcde'[int(np.argmax(y))]})" in line
