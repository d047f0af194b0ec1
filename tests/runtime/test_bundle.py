"""Opening bundles: folders, archives, lone .tflite files, and refusing damaged ones."""

from __future__ import annotations

import json
import shutil

import pytest

from liteship.errors import BundleError
from liteship.runtime.bundle import Bundle, pack_bundle


@pytest.fixture
def bundle_copy(fixture_bundles, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(fixture_bundles / "classifier-fp16", dst)
    return dst


def test_opens_and_exposes_the_manifest(bundle_copy):
    b = Bundle.open(bundle_copy)
    assert (b.family, b.task, b.quantization) == ("classifier", "image-classification", "fp16")
    assert b.asset("labels").read_text().split() == ["a", "b", "c", "d", "e"]
    assert b.sha256() == b.manifest["files"]["model.tflite"]["sha256"]


def test_tampered_model_is_refused(bundle_copy):
    model = bundle_copy / "model.tflite"
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    model.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="model.tflite fails its sha256 check"):
        Bundle.open(bundle_copy)


def test_truncated_model_is_refused(bundle_copy):
    model = bundle_copy / "model.tflite"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(BundleError, match=r"model.tflite is 1000 bytes, the manifest says \d+ \(truncated\)"):
        Bundle.open(bundle_copy)


def test_missing_asset_is_refused(bundle_copy):
    (bundle_copy / "assets" / "labels.txt").unlink()
    with pytest.raises(BundleError, match="assets/labels.txt is missing"):
        Bundle.open(bundle_copy)


def test_foreign_schema_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["schema"] = "someone-else/9"
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema 'someone-else/9'"):
        Bundle.open(bundle_copy)


def test_broken_manifest_json(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json: not valid JSON"):
        Bundle.open(bundle_copy)


def test_folder_without_manifest(tmp_path):
    with pytest.raises(BundleError, match="not a liteship bundle"):
        Bundle.open(tmp_path)


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz"])
def test_archives_round_trip(bundle_copy, tmp_path, monkeypatch, suffix):
    monkeypatch.setenv("LITESHIP_CACHE", str(tmp_path / "cache"))
    archive = pack_bundle(bundle_copy, tmp_path / f"model{suffix}")
    b = Bundle.open(archive)
    assert b.quantization == "fp16"
    assert b.model_path.read_bytes() == (bundle_copy / "model.tflite").read_bytes()
    assert Bundle.open(archive).root == b.root  # extracted once, then reused


def test_damaged_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("LITESHIP_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(BundleError, match="bad.zip"):
        Bundle.open(bad)


def test_archive_with_path_traversal_is_refused(tmp_path, monkeypatch):
    import zipfile

    monkeypatch.setenv("LITESHIP_CACHE", str(tmp_path / "cache"))
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escaped.txt", "x")
        zf.writestr("manifest.json", "{}")
    with pytest.raises(BundleError, match="unsafe path"):
        Bundle.open(evil)
    assert not (tmp_path / "escaped.txt").exists()


def test_lone_tflite_describes_itself(bundle_copy, tmp_path):
    lone = tmp_path / "lone.tflite"
    shutil.copy(bundle_copy / "model.tflite", lone)
    b = Bundle.open(lone)
    assert b.quantization == "fp16" and b.family == "classifier"


def test_one_cache_root_for_the_runtime_and_the_local_device(monkeypatch, tmp_path):
    from liteship.device.local import LocalTarget
    from liteship.runtime.bundle import cache_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LITESHIP_LOCAL_WORKDIR", raising=False)
    monkeypatch.setenv("LITESHIP_CACHE", "")  # set but empty: the default, not the current folder
    assert cache_root() == tmp_path / "home" / ".cache" / "liteship"
    monkeypatch.setenv("LITESHIP_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert LocalTarget("local").default_workdir() == str((tmp_path / "c" / "device").resolve())
