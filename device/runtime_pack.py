"""The liteship runtime as one self-contained zipapp a board runs with its own python3.

It holds ``liteship/__init__.py``, ``liteship/errors.py``, ``liteship/units.py`` and ``liteship/runtime/**`` only - never convert/ or
device/, so a board needs numpy and an interpreter wheel (ai-edge-litert or tflite-runtime), nothing else. The zip
is byte-for-byte reproducible (sorted entries, fixed timestamps), so its sha256 names it and a device keeps one copy
per runtime version: ``<workdir>/runtime/liteship-runtime-<sha12>.pyz``.

On the device: ``python3 liteship-runtime-<sha12>.pyz bench BUNDLE --json -`` (= ``liteship.runtime.bench.main``).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from liteship.errors import DeviceError
from liteship.runtime.files import write_atomic

from .base import Target, quote

# Fixed so that the same sources always give the same bytes (zip's earliest representable date).
_EPOCH = (1980, 1, 1, 0, 0, 0)

_MAIN = '''"""liteship runtime zipapp: python3 liteship-runtime.pyz bench BUNDLE [...] | eval gpt2|bit BUNDLE DATA"""
import sys


def main():
    args = sys.argv[1:]
    commands = ("bench", "eval", "version")
    if not args or args[0] not in commands:
        sys.stderr.write("usage: python3 %s {%s} ...\\n" % (sys.argv[0], ",".join(commands)))
        return 2
    if args[0] == "version":
        import liteship
        print(liteship.__version__)
        return 0
    if args[0] == "eval":
        from liteship.runtime.device_eval import main as eval_main
        return eval_main(args[1:])
    from liteship.runtime.bench import main as bench_main
    return bench_main(args[1:])


sys.exit(main())
'''


def _sources() -> list[tuple[str, Path]]:
    import liteship
    import liteship.runtime

    top = Path(liteship.__file__).parent
    runtime = Path(liteship.runtime.__file__).parent
    files = [(f"liteship/{name}", top / name) for name in ("__init__.py", "errors.py", "units.py")]
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
        write_atomic(path, data)
    return path, digest


@dataclass(frozen=True)
class CachedFile:
    """A host file kept on the device at ``remote_dir/name`` and re-sent only when its sha256 differs there."""

    local: Path
    sha256: str
    remote_dir: str
    name: str
    mode: str | None = None  # e.g. "755" for a binary

    @property
    def remote(self) -> str:
        return f"{self.remote_dir}/{self.name}"


def ensure_files_on_device(target: Target, files: list[CachedFile]) -> list[str]:
    """Make each file present on the device with the right hash; returns their remote paths.

    One round trip checks them all; a missing or stale one goes to a temporary name, then one round trip hashes
    the new copies on the device and renames them into place (never half a file under the real name).
    """
    from .push import SHA256_FUNCTION, VERIFY_FAILED

    check = SHA256_FUNCTION + "".join(
        f"mkdir -p {quote(f.remote_dir)} || exit 1\nprintf 'F {i} '; hash_files {quote(f.remote_dir)} "
        f"{quote(f.name)}\n" for i, f in enumerate(files))
    out = target.shell(check, timeout=120).stdout
    present = {int(line.split()[1]): line.split()[-1] for line in out.splitlines() if line.startswith("F ")}
    stale = [f for i, f in enumerate(files) if present.get(i) != f.sha256]
    if not stale:
        return [f.remote for f in files]
    tmps = [f"{f.remote_dir}/.{f.name}.partial" for f in stale]
    try:
        for f, tmp in zip(stale, tmps):
            target.put(f.local, tmp, timeout=60 + f.local.stat().st_size / 200_000)
        install = SHA256_FUNCTION + "".join(
            f"verify_files {quote(f.remote_dir)} {quote('.' + f.name + '.partial')} {f.sha256} "
            f"|| exit {VERIFY_FAILED}\n"
            + (f"chmod {f.mode} {quote(tmp)} || exit 1\n" if f.mode else "")
            + f"mv -f {quote(tmp)} {quote(f.remote)} || exit 1\n" for f, tmp in zip(stale, tmps))
        done = target.shell(install, timeout=600, check=False)
        if done.returncode == VERIFY_FAILED:
            bad = stale[len([l for l in done.stdout.splitlines() if l.startswith("H ")]) - 1]
            raise DeviceError(f"{target.name}: {bad.name} failed its sha256 check on the device")
        target.check_result("install " + ", ".join(f.name for f in stale), done)
    except BaseException:
        try:
            target.run(["rm", "-f", *tmps], timeout=30, check=False)
        except Exception:
            pass
        raise
    return [f.remote for f in files]


def runtime_file(workdir: str, cache: Path) -> CachedFile:
    """The runtime zipapp as a CachedFile under ``<workdir>/runtime`` (built into ``cache`` on the host)."""
    local, digest = write_runtime_zip(cache)
    return CachedFile(local, digest, f"{workdir.rstrip('/')}/runtime", local.name)
