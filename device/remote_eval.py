"""`liteship eval gpt2|bit --device TARGET`: the evaluation runs on the device, with its runtime and interpreter
(accuracy can change with the device's delegate and kernels).

The bundle (and a reference bundle) go over with push.py; the data and the runtime zipapp as files cached by hash
(runtime_pack.py): a text file as it is, a folder of class folders as one tar.gz unpacked there. The device runs
``python3 liteship-runtime.pyz eval gpt2|bit ...`` (runtime/device_eval.py) and prints the result as JSON, which
comes back as the command's result with the target added.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

from liteship.errors import DeviceError

from .base import Target, device_python, last_line, open_target, quote
from .bench import _host_cache
from .push import push_bundle
from .runtime_pack import CachedFile, ensure_files_on_device, runtime_file

KINDS = ("gpt2", "bit")


def folder_archive(folder: Path) -> bytes:
    """A tar.gz of ``folder`` whose bytes depend only on the names and contents inside (sorted, no dates or
    owners), so its sha256 names it and an unchanged folder is not sent twice."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            info = tarfile.TarInfo(f"{folder.name}/{path.relative_to(folder).as_posix()}")
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    return gzip.compress(raw.getvalue(), mtime=0)


def _place_data(target: Target, data: Path, workdir: str, stage: Path) -> tuple[CachedFile, Callable[[str], str]]:
    """(the file to send, remote file -> the path the evaluation reads after unpacking)."""
    if data.is_file():
        digest = hashlib.sha256(data.read_bytes()).hexdigest()
        return CachedFile(data, digest, f"{workdir}/data", f"{digest[:12]}-{data.name}"), lambda remote: remote
    archive = folder_archive(data)
    digest = hashlib.sha256(archive).hexdigest()
    local = stage / f"{digest[:12]}.tar.gz"
    local.write_bytes(archive)
    folder = f"{workdir}/data/{digest[:12]}"

    def unpack(remote: str) -> str:
        target.shell(f"rm -rf {quote(folder)} && mkdir -p {quote(folder)} && "
                     f"gzip -dc {quote(remote)} | tar -xf - -C {quote(folder)}", timeout=600)
        return f"{folder}/{data.name}"

    return CachedFile(local, digest, f"{workdir}/data", local.name), unpack


def eval_on_device(spec: str, kind: str, bundle: str | Path, data: str | Path, *,
                   reference: str | Path | None = None, threads: int | None = None, python: str | None = None,
                   workdir: str | None = None, target_options: dict | None = None,
                   progress: Callable[[str], None] | None = None, timeout_s: float = 3600.0) -> dict:
    if kind not in KINDS:
        raise DeviceError(f"cannot evaluate {kind!r} on a device; one of {', '.join(KINDS)}")
    say = progress or (lambda message: None)
    data = Path(data)
    if reference is not None and not (Path(reference) / "manifest.json").is_file():
        raise DeviceError(f"--reference {reference}: on a device the reference must be a bundle (a checkpoint needs "
                          "TensorFlow, which devices do not have)")
    with open_target(spec, **(target_options or {})) as target, tempfile.TemporaryDirectory() as stage:
        python = device_python(target, python)
        workdir = (workdir or target.default_workdir()).rstrip("/")
        say(f"{spec}: pushing {Path(bundle).name}")
        remote_bundle = push_bundle(target, bundle, workdir=workdir, progress=say).remote_path
        remote_reference = push_bundle(target, reference, workdir=workdir, progress=say).remote_path \
            if reference is not None else None
        say(f"{spec}: sending {data.name} and the runtime")
        data_file, unpack = _place_data(target, data, workdir, Path(stage))
        remote_data, runtime = ensure_files_on_device(target, [data_file, runtime_file(workdir, _host_cache())])
        argv = [python, runtime, "eval", kind, remote_bundle, unpack(remote_data)]
        if remote_reference:
            argv += ["--reference", remote_reference]
        if threads:
            argv += ["--threads", str(threads)]
        say(f"{spec}: evaluating")
        done = target.run(argv, timeout=timeout_s, check=False)
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.startswith("error:")]
        detail = lines[-1][len("error:"):].strip() if lines else last_line(done.stderr or done.stdout)
        raise DeviceError(f"{spec}: the evaluation failed: {detail}")
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise DeviceError(f"{spec}: the evaluation printed no result: {last_line(done.stdout)}") from None
    return dict(result, target=spec)
