"""Opens a bundle (folder, .zip, .tar[.gz] or a lone .tflite) and checks it before anything runs it."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

from liteship.errors import BundleError
from liteship.runtime.files import atomic_output, json_kind, read_json, require, sha256_file, sweep_stale
from liteship.runtime.tflite_file import read_model

SCHEMA = "liteship.bundle/1"
MODEL_NAME = "model.tflite"
MANIFEST_NAME = "manifest.json"


def cache_root() -> Path:
    """$LITESHIP_CACHE (unset or empty: ~/.cache/liteship): the one root of every cache liteship keeps (extracted
    bundles, weight caches, conversions, the runtime pack, the local target's workdir)."""
    return Path(os.environ.get("LITESHIP_CACHE") or Path.home() / ".cache" / "liteship").expanduser()


def is_bundle(path: str | Path) -> bool:
    """A path Bundle.open takes: a bundle folder, a lone .tflite or an archive of a bundle."""
    path = Path(path)
    return (path / MANIFEST_NAME).is_file() or (path.is_file() and path.suffix in (".tflite", ".zip", ".tar",
                                                                                  ".gz", ".tgz"))


def _safe_members(names: list[str], archive: Path) -> None:
    for name in names:
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts:
            raise BundleError(f"{archive}: unsafe path {name!r} in archive")


def _extract(archive: Path) -> Path:
    """Extracts once into the cache, keyed by the archive's hash, atomically."""
    digest = sha256_file(archive)[:16]
    dest = cache_root() / "bundles" / f"{archive.name}-{digest}"
    if (dest / MANIFEST_NAME).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(dest.parent, ".extract-")  # what a killed extraction left
    tmp = Path(tempfile.mkdtemp(prefix=f".extract-{os.getpid()}-", dir=dest.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _safe_members(zf.namelist(), archive)
                zf.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = [m for m in tf.getmembers() if m.isfile() or m.isdir()]
                _safe_members([m.name for m in members], archive)
                tf.extractall(tmp, members=members)
        else:
            raise BundleError(f"{archive}: not a zip or tar archive")
        # An archive of the folder itself holds one top-level directory.
        root = tmp
        entries = list(tmp.iterdir())
        if len(entries) == 1 and entries[0].is_dir() and not (tmp / MANIFEST_NAME).exists():
            root = entries[0]
        if not (root / MANIFEST_NAME).is_file():
            raise BundleError(f"{archive}: no {MANIFEST_NAME} inside; not a liteship bundle archive")
        os.replace(root, dest)
        return dest
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"{archive}: damaged archive ({exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _safe_relative(rel: str) -> bool:
    p = Path(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts


def check_manifest(manifest: dict, where: Path) -> None:
    """The shape every reader of a manifest relies on; raises BundleError naming the file and the key."""
    for key in ("signatures", "preprocessing", "config", "assets", "files"):
        require(manifest, key, dict, str(where), error=BundleError, optional=key != "files")
    for rel, entry in manifest["files"].items():
        if not _safe_relative(rel):
            raise BundleError(f"{where}: unsafe file name {rel!r} in 'files'")
        if not isinstance(entry, dict):
            raise BundleError(f"{where}: files[{rel!r}] must be a JSON object, not {json_kind(entry)}")
        sha = require(entry, "sha256", str, f"{where}: files[{rel!r}]", error=BundleError)
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise BundleError(f"{where}: files[{rel!r}]['sha256'] is not a sha256 hex digest")
        require(entry, "size", int, f"{where}: files[{rel!r}]", error=BundleError, minimum=0)
    for role, rel in (manifest.get("assets") or {}).items():
        if not isinstance(rel, str) or not _safe_relative(rel):
            raise BundleError(f"{where}: asset {role!r} has an unsafe or non-text path {rel!r}")
    for key, sig in (manifest.get("signatures") or {}).items():
        if not isinstance(sig, dict) or not all(isinstance(sig.get(k, []), list) for k in ("inputs", "outputs")):
            raise BundleError(f"{where}: signatures[{key!r}] must be an object with 'inputs' and 'outputs' lists")


class Bundle:
    """A checked bundle. ``manifest`` is the dict from manifest.json (or the one embedded in a lone .tflite)."""

    def __init__(self, root: Path, model_path: Path, manifest: dict):
        self.root, self.model_path, self.manifest = root, model_path, manifest

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = True) -> "Bundle":
        path = Path(path)
        if not path.exists():
            raise BundleError(f"{path}: no such bundle or model")
        if path.is_file() and path.suffix == ".tflite":
            manifest = read_model(path).manifest()
            if manifest is not None and not isinstance(manifest, dict):
                raise BundleError(f"{path}: its embedded manifest is {json_kind(manifest)}, not a JSON object")
            if manifest is not None:
                check_manifest(dict(manifest, files=manifest.get("files") or {}), path)
            if manifest is None:
                # A plain .tflite from elsewhere: describe it from the flatbuffer itself.
                info = read_model(path)
                manifest = {"schema": SCHEMA, "family": "unknown", "task": "unknown", "quantization": "unknown",
                            "signatures": info.signature_specs(), "preprocessing": {}, "config": {}, "assets": {}}
            return cls(path.parent, path, manifest)
        if path.is_file():
            path = _extract(path)
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise BundleError(f"{path}: no {MANIFEST_NAME}; not a liteship bundle")
        manifest = read_json(manifest_path, error=BundleError)
        if manifest.get("schema") != SCHEMA:
            raise BundleError(f"{path}: bundle schema {manifest.get('schema')!r} is not {SCHEMA!r}")
        check_manifest(manifest, manifest_path)
        bundle = cls(path, path / MODEL_NAME, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Checks every file's size and sha256 against the manifest; raises BundleError naming the first bad one."""
        files = self.manifest.get("files") or {}
        if MODEL_NAME not in files:
            raise BundleError(f"{self.root}: manifest lists no {MODEL_NAME}")
        for rel, expect in sorted(files.items()):
            p = self.root / rel
            if not p.is_file():
                raise BundleError(f"{self.root}: {rel} is missing")
            if p.stat().st_size != expect.get("size", p.stat().st_size):
                raise BundleError(
                    f"{self.root}: {rel} is {p.stat().st_size} bytes, the manifest says {expect['size']} "
                    f"({'truncated' if p.stat().st_size < expect['size'] else 'modified'})")
            if sha256_file(p) != expect["sha256"]:
                raise BundleError(f"{self.root}: {rel} fails its sha256 check (modified or corrupt)")

    @property
    def family(self) -> str:
        return self.manifest.get("family", "unknown")

    @property
    def task(self) -> str:
        return self.manifest.get("task", "unknown")

    @property
    def quantization(self) -> str:
        return self.manifest.get("quantization", "unknown")

    @property
    def config(self) -> dict:
        return self.manifest.get("config") or {}

    @property
    def preprocessing(self) -> dict:
        return self.manifest.get("preprocessing") or {}

    @property
    def signatures(self) -> dict:
        return self.manifest.get("signatures") or {}

    def asset(self, role: str) -> Path:
        rel = (self.manifest.get("assets") or {}).get(role)
        if rel is None:
            raise BundleError(f"{self.root}: bundle has no {role!r} asset")
        return self.root / rel

    def has_asset(self, role: str) -> bool:
        return role in (self.manifest.get("assets") or {})

    def sha256(self) -> str:
        entry = (self.manifest.get("files") or {}).get(MODEL_NAME)
        return entry["sha256"] if entry else sha256_file(self.model_path)

    def __repr__(self) -> str:
        return f"Bundle({str(self.root)!r}, family={self.family!r}, quantization={self.quantization!r})"


def pack_bundle(bundle_dir: str | os.PathLike, archive: str | os.PathLike) -> Path:
    """Writes a .zip or .tar(.gz) of a bundle folder, atomically."""
    bundle = Bundle.open(bundle_dir)
    archive = Path(archive)
    if not archive.name.endswith((".zip", ".tar", ".tar.gz", ".tgz")):
        raise BundleError(f"{archive}: choose a .zip, .tar or .tar.gz name")
    names = sorted(bundle.manifest["files"]) + [MANIFEST_NAME]
    # A unique temporary name per run: two packs to one archive each write their own, and the last rename wins
    # with a complete archive.
    with atomic_output(archive, error=BundleError) as tmp:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
                for rel in names:
                    zf.write(bundle.root / rel, f"{bundle.root.name}/{rel}")
        else:
            mode = "w:gz" if archive.name.endswith(("gz",)) else "w"
            with tarfile.open(tmp, mode) as tf:
                for rel in names:
                    tf.add(bundle.root / rel, f"{bundle.root.name}/{rel}")
    return archive
