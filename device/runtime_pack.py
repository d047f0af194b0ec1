"""The liteship runtime as one self-contained zipapp a board runs with its own python3.

It holds ``liteship/__init__.py``, ``liteship/errors.py`` and ``liteship/runtime/**`` only - never convert/ or
device/, so a board needs numpy and an interpreter wheel (ai-edge-litert or tflite-runtime), nothing else. The zip
is byte-for-byte reproducible (sorted entries, fixed timestamps), so its sha256 names it and a device keeps one copy
per runtime version: ``<workdir>/runtime/liteship-runtime-<sha12>.pyz``.

On the device: ``python3 liteship-runtime-<sha12>.pyz bench BUNDLE --json -`` (= ``liteship.runtime.bench.main``).
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

from liteship.errors import DeviceError

from .base import Target, quote

# Fixed so that the same sources always give the same bytes (zip's earliest representable date).
_EPOCH = (1980, 1, 1, 0, 0, 0)

_MAIN = '''"""liteship runtime zipapp: python3 liteship-runtime.pyz bench BUNDLE [--json -] [...]"""
import sys


def main():
    args = sys.argv[1:]
    commands = ("bench", "version")
    if not args or args[0] not in commands:
        sys.stderr.write("usage: python3 %s {%s} ...\\n" % (sys.argv[0], ",".join(commands)))
        return 2
    if args[0] == "version":
        import liteship
        print(liteship.__version__)
        return 0
    from liteship.runtime.bench import main as bench_main
    return bench_main(args[1:])


sys.exit(main())
'''


def _sources() -> list[tuple[str, Path]]:
    import liteship
    import liteship.runtime

    top = Path(liteship.__file__).parent
    runtime = Path(liteship.runtime.__file__).parent
    files = [("liteship/__init__.py", top / "__init__.py"), ("liteship/errors.py", top / "errors.py")]
    for path in sorted(runtime.rglob("*")):
        rel = path.relative_to(runtime)
        if path.is_file() and "__pycache__" not in rel.parts and path.suffix not in (".pyc", ".pyo"):
            files.append((f"liteship/runtime/{rel.as_posix()}", path))
    return files


def build_runtime_zip() -> bytes:
    """The zipapp's bytes (deterministic for given sources)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        entries = [("__main__.py", _MAIN.encode())] + [(name, path.read_bytes()) for name, path in _sources()]
        for name, data in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return b"#!/usr/bin/env python3\n" + buffer.getvalue()


def write_runtime_zip(folder: Path) -> tuple[Path, str]:
    """Write the zipapp into ``folder`` under its hash name (reused if present); returns (path, sha256)."""
    data = build_runtime_zip()
    digest = hashlib.sha256(data).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"liteship-runtime-{digest[:12]}.pyz"
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path, digest


def ensure_file_on_device(target: Target, local: Path, sha256: str, remote_dir: str, remote_name: str,
                          *, mode: str | None = None) -> str:
    """Put ``local`` at ``remote_dir/remote_name`` unless a file with that sha256 is already there; returns the
    remote path. The copy goes to a temporary name, is hashed on the device, then renamed (never half a file)."""
    from .push import SHA256_FUNCTION, VERIFY_FAILED, remote_hashes

    remote = f"{remote_dir}/{remote_name}"
    if remote_hashes(target, remote_dir, [remote_name], mkdir=True)[remote_name] == sha256:
        return remote
    tmp_name = f".{remote_name}.partial"
    tmp = f"{remote_dir}/{tmp_name}"
    try:
        target.put(local, tmp, timeout=60 + local.stat().st_size / 200_000)
        done = target.shell(
            SHA256_FUNCTION
            + f"verify_files {quote(remote_dir)} {quote(tmp_name)} {sha256} || exit {VERIFY_FAILED}\n"
            + (f"chmod {mode} {quote(tmp)} && " if mode else "") + f"mv -f {quote(tmp)} {quote(remote)}\n",
            timeout=120, check=False,
        )
        if done.returncode == VERIFY_FAILED:
            raise DeviceError(f"{target.name}: {remote_name} failed its sha256 check on the device")
        target.check_result(f"install {remote_name}", done)
    except BaseException:
        try:
            target.run(["rm", "-f", tmp], timeout=30, check=False)
        except Exception:
            pass
        raise
    return remote


def ensure_runtime(target: Target, workdir: str, cache: Path) -> str:
    """The remote path of the runtime zipapp on ``target``, pushed once per runtime version."""
    local, digest = write_runtime_zip(cache)
    return ensure_file_on_device(target, local, digest, f"{workdir.rstrip('/')}/runtime", local.name)
