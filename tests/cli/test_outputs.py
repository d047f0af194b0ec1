"""Outputs under faults: a full or read-only disk, two runs writing one file, a killed run's leftovers, file modes,
and what `run model` says about quantized inputs and labels. Each runs the real CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.cli.harness import assert_failed_cleanly, cli_env, command, leftovers, run, tree_digest


@pytest.fixture
def small_disk(tmpfs):
    """A 64 KiB tmpfs (root only); the test is skipped where mounting is not allowed."""
    return tmpfs("disk", "64k")


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


def test_one_size_is_written_one_way_everywhere(fixture_bundles, tmp_path):
    """A model's size in SI units (kB, MB) by liteship.units.size_text, memory in MiB: inspect, the converter's
    summary, the runner's table, the bench report and a push say the same thing."""
    from liteship.units import size_text

    out = tmp_path / "b"
    converted = run(["convert", "savedmodel", fixture_bundles / "classifier-savedmodel", "-o", out], tmp_path)
    assert converted.returncode == 0, converted.stderr
    size = size_text((out / "model.tflite").stat().st_size)
    assert re.search(rf"wrote .*: {re.escape(size)} model, fp32, .* peak RSS \d+\.\d MiB$", converted.stderr.strip())
    assert run(["inspect", out], tmp_path).stdout.splitlines()[0].endswith(f"  {size}")
    table = subprocess.run([sys.executable, "-m", "liteship.runtime.bench", str(out), "--runs", "2"],
                           capture_output=True, text=True, check=True).stdout
    assert f"({size}, fp32)" in table and re.search(r"peak RSS\s+\d+\.\d MiB \(model \d+\.\d MiB\)", table)
    report = run(["bench", out, "--runs", "2", "--warmup", "0"], tmp_path).stdout
    assert f"(model {size}," in report and "| peak RSS MiB | model RSS MiB |" in report
    pushed = run(["device", "push", out, "local", "--workdir", tmp_path / "wd"], tmp_path)
    assert f"sending model.tflite ({size})" in pushed.stderr, pushed.stderr
    for text in (converted.stderr, table, report, pushed.stderr):
        assert not re.search(r"\d (KB|KiB|Mb|mb)\b", text), text


def test_native_noise_is_hidden_unless_liteship_verbose(fixture_bundles, tmp_path):
    """TensorFlow, absl, CUDA probing and XNNPACK print from C++ on every convert and run; only liteship's own
    lines reach stderr, and LITESHIP_VERBOSE=1 shows the rest."""
    converted = run(["convert", "savedmodel", fixture_bundles / "classifier-savedmodel", "-o", tmp_path / "b"],
                    tmp_path)
    assert converted.returncode == 0, converted.stderr
    lines = [line for line in converted.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("[liteship] ") for line in lines), lines
    np.save(tmp_path / "x.npy", np.zeros((12, 12, 3), np.float32))
    args = ["run", "model", tmp_path / "b", "--input", tmp_path / "x.npy"]
    quiet = run(args, tmp_path)
    assert quiet.returncode == 0 and quiet.stderr.strip() == "", quiet.stderr
    verbose = run(args, tmp_path, env=cli_env(tmp_path, LITESHIP_VERBOSE="1"))
    assert verbose.returncode == 0 and "XNNPACK" in verbose.stderr, verbose.stderr
    assert verbose.stdout == quiet.stdout


def test_two_cli_pushes_of_one_name_at_once(fixture_bundles, tmp_path):
    """Two `liteship device push` processes, one bundle name, one device: the second says another push is in
    progress (naming the lock) and leaves the first one's transfer alone; the first installs a whole bundle."""
    from tests.device.test_push import tree, variant

    big = variant(fixture_bundles / "classifier-fp32", tmp_path / "big", {"assets/big.bin": os.urandom(200_000_000)})
    workdir = tmp_path / "wd"
    first = subprocess.Popen(command("device", "push", big, "local", "--workdir", workdir), env=cli_env(tmp_path),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = workdir / "bundles" / ".big.lock"
    for _ in range(600):  # the first holds the lock while it sends 200 MB
        if lock.exists() or first.poll() is not None:
            break
        time.sleep(0.01)
    assert lock.exists(), "the first push never took its lock"
    second = run(["device", "push", big, "local", "--workdir", workdir], tmp_path)
    assert_failed_cleanly(second, exit_code=1, names=("another push of big is in progress", ".big.lock"))
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert tree(workdir / "bundles" / "big") == tree(big)
    assert not lock.exists() and not leftovers(workdir)


def test_pushed_bundles_are_readable_by_other_users_of_the_board(fixture_bundles, tmp_path):
    """Under umask 022 a pushed bundle is 0755 folders and 0644 files, like a converted one."""
    workdir = tmp_path / "wd"
    result = subprocess.run(["sh", "-c", 'umask 022 && exec "$@"', "sh",
                             *command("device", "push", fixture_bundles / "classifier-fp32", "local", "--workdir",
                                      workdir)], env=cli_env(tmp_path), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    root = workdir / "bundles" / "classifier-fp32"
    for p in [root, *root.rglob("*")]:
        assert p.stat().st_mode & 0o777 == (0o755 if p.is_dir() else 0o644), (p, oct(p.stat().st_mode))
