"""Writes a bundle: model.tflite (with the manifest embedded), manifest.json and assets, atomically."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Union

import liteship
from liteship.convert.quant import Quant
from liteship.convert.tflite_metadata import embed_metadata
from liteship.errors import ConvertError, check_interrupted
from liteship.runtime.bench import utc_timestamp
from liteship.runtime.bundle import MANIFEST_NAME, MODEL_NAME, SCHEMA
from liteship.runtime.files import (
    PARTIAL_SUFFIX,
    current_umask,
    nearest_existing_folder,
    replace_folder,
    sha256_file,
    sweep_partials,
    sweep_stale,
    sweep_work_dirs,
)
from liteship.runtime.tflite_file import MANIFEST_METADATA_NAME, read_model

AssetSource = Union[str, os.PathLike, bytes]


def hash_source(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint file, or of a folder's files (relative names and contents, in sorted order)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        h.update(bytes.fromhex(sha256_file(f)))
    return h.hexdigest()


def library_versions() -> dict:
    versions = {"liteship": liteship.__version__, "python": platform.python_version()}
    import importlib.metadata as md

    for dist in ("tensorflow", "tf_keras", "tensorflow-model-optimization", "transformers", "torch", "ai-edge-litert"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return versions


def check_out_dir(out_dir: str | os.PathLike, *, overwrite: bool = True, option: str = "--out") -> Path:
    """Refuses, before any conversion work, an output that write_bundle could not replace: a file, a folder that
    is not a bundle, or a place that cannot be written."""
    out_dir = Path(out_dir)
    sweep_work_dirs()  # every conversion cleans up after killed ones, whatever their kind
    if out_dir.exists() and not overwrite:
        raise ConvertError(f"{option} {out_dir}: already exists")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConvertError(f"{option} {out_dir}: is a file, not a bundle folder")
    if out_dir.is_dir() and not (out_dir / MANIFEST_NAME).is_file() and any(out_dir.iterdir()):
        raise ConvertError(f"{option} {out_dir}: exists and is not a liteship bundle; refusing to replace it")
    ancestor = nearest_existing_folder(out_dir)
    if not ancestor.is_dir():
        raise ConvertError(f"{option} {out_dir}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConvertError(f"{option} {out_dir}: {ancestor} is not writable")
    return out_dir


def _readable_by_all(root: Path) -> None:
    """Bundle files get the modes a plain new file and folder get under the umask (0644/0755 under 0022), so
    another user on a board can read them: mkdtemp and mkstemp make them private."""
    umask = current_umask()
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def write_bundle(out_dir: str | os.PathLike, tflite: bytes | str | os.PathLike, *, family: str, task: str,
                 quantization: "Quant | str", io_type: str = "float32", preprocessing: dict | None = None,
                 config: dict | None = None, assets: Mapping[str, tuple[str, AssetSource]] | None = None,
                 source: dict | None = None, conversion: dict | None = None, overwrite: bool = True,
                 check: Callable[[Path], None] | None = None, move_model: bool = False) -> Path:
    """Writes the bundle folder ``out_dir`` and returns it.

    ``assets`` maps a role to (relative path inside the bundle, source file or bytes), e.g.
    ``{"labels": ("assets/labels.txt", b"cat\\ndog\\n")}``. Everything is written into a temporary sibling folder
    and renamed into place when complete, so a failure leaves no partial bundle and an old bundle intact.
    ``check``, if given, is called with that finished temporary folder before the rename: what it raises discards
    the new bundle and keeps the old one. ``move_model``: ``tflite`` is the caller's temporary file; it is moved in
    rather than copied (a 6 GB gpt2-xl otherwise needs three copies' worth of disk at once)."""
    out_dir = check_out_dir(out_dir, overwrite=overwrite)
    quant = Quant.parse(quantization)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    sweep_partials(out_dir)
    sweep_stale(out_dir.parent, f".{out_dir.name}.old-")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}-", suffix=PARTIAL_SUFFIX, dir=out_dir.parent))
    try:
        raw_model = tmp / "raw.tflite"
        if isinstance(tflite, (bytes, bytearray)):
            raw_model.write_bytes(tflite)
        elif move_model:
            shutil.move(tflite, raw_model)
        else:
            shutil.copyfile(tflite, raw_model)
        info = read_model(raw_model)

        asset_roles = {}
        for role, (rel, src) in (assets or {}).items():
            rel_path = Path(rel)
            if rel_path.is_absolute() or ".." in rel_path.parts or rel in (MODEL_NAME, MANIFEST_NAME):
                raise ConvertError(f"asset {role!r} has an unsafe bundle path {rel!r}")
            dest = tmp / rel_path
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, (bytes, bytearray)):
                dest.write_bytes(src)
            else:
                if not Path(src).is_file():
                    raise ConvertError(f"asset {role!r}: {src} does not exist")
                shutil.copyfile(src, dest)
            asset_roles[role] = rel_path.as_posix()

        manifest = {
            "schema": SCHEMA,
            "family": family,
            "task": task,
            "quantization": quant.value,
            "io_type": io_type,
            "signatures": info.signature_specs(),
            "preprocessing": preprocessing or {},
            "config": config or {},
            "assets": asset_roles,
            "source": source or {},
            "conversion": dict(conversion or {}, op_counts=info.op_counts()),
            "versions": library_versions(),
            "created": utc_timestamp(),
        }
        embedded = json.dumps(manifest, sort_keys=True).encode("utf-8")
        embed_metadata(raw_model, tmp / MODEL_NAME, {MANIFEST_METADATA_NAME: embedded})
        raw_model.unlink()

        manifest["files"] = {
            p.relative_to(tmp).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
            for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _readable_by_all(tmp)
        if check is not None:
            check(tmp)

        check_interrupted()  # a Ctrl-C swallowed inside the converter must still keep the old bundle
        replace_folder(tmp, out_dir)  # the old bundle stays if a Ctrl-C comes during the swap
        return out_dir
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
