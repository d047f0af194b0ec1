"""`liteship inspect`, `liteship run model`, `liteship bench` on the host."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np


def liteship(*args):
    return subprocess.run([sys.executable, "-m", "liteship.cli", *map(str, args)], capture_output=True, text=True)


def test_inspect_text_and_json(fixture_bundles):
    proc = liteship("inspect", fixture_bundles / "classifier-int8")
    assert proc.returncode == 0, proc.stderr
    assert "quantization int8" in proc.stdout and "signature serving_default" in proc.stdout
    assert "CONV_2D x2" in proc.stdout and "liteship.manifest" in proc.stdout
    assert "in   image: float32[-1x12x12x3]" in proc.stdout  # int8 inside, float32 at the edges
    d = json.loads(liteship("inspect", "--json", fixture_bundles / "classifier-int8" / "model.tflite").stdout)
    assert d["quantization"] == "int8" and d["op_counts"]["CONV_2D"] == 2


def test_inspect_refuses_a_tampered_bundle(fixture_bundles, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(fixture_bundles / "classifier-fp32", b)
    (b / "assets" / "labels.txt").write_text("A\nb\nc\nd\ne\n")  # same size, other bytes
    proc = liteship("inspect", b)
    assert proc.returncode == 1 and "labels.txt fails its sha256 check" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_model_on_npy(fixture_bundles, tmp_path):
    ref = np.load(fixture_bundles / "classifier-fp32.reference.npz")
    np.save(tmp_path / "x.npy", ref["x"][0])
    proc = liteship("run", "model", fixture_bundles / "classifier-fp32", "--input", tmp_path / "x.npy",
                    "--output", tmp_path / "y.npz")
    assert proc.returncode == 0, proc.stderr
    got = next(iter(np.load(tmp_path / "y.npz").values()))
    np.testing.assert_allclose(got[0], ref["y"][0], atol=1e-5)
    assert f"argmax {int(ref['y'][0].argmax())}" in proc.stdout


def test_run_model_with_a_wrong_input_shape(fixture_bundles, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((5, 5), np.float32))
    proc = liteship("run", "model", fixture_bundles / "classifier-fp32", "--input", tmp_path / "x.npy")
    assert proc.returncode == 1 and "has shape (5, 5)" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_on_the_host_writes_json_atomically(fixture_bundles, tmp_path, monkeypatch):
    """`liteship bench` with no --device runs on the host (the `local` device)."""
    monkeypatch.setenv("LITESHIP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "r.json"
    proc = liteship("bench", fixture_bundles / "classifier-fp32", "--runs", "4", "--json", out)
    assert proc.returncode == 0, proc.stderr
    (entry,) = json.loads(out.read_text())["results"]
    assert entry["ok"] and entry["target"] == "local"
    assert entry["bench"]["runs"] == 4 and len(entry["bench"]["latency_ms"]["samples"]) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "r.json"]
    assert "p50" in proc.stdout


def test_pack_then_use_the_archive(fixture_bundles, tmp_path, monkeypatch):
    monkeypatch.setenv("LITESHIP_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "model.zip"
    proc = liteship("pack", fixture_bundles / "classifier-int8", archive)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(liteship("inspect", "--json", archive).stdout)
    assert info["quantization"] == "int8"
    bad = liteship("pack", fixture_bundles / "classifier-int8", tmp_path / "model.rar")
    assert bad.returncode == 1 and "choose a .zip, .tar or .tar.gz name" in bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "model.zip"]
