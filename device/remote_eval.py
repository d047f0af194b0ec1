"""`liteship eval gpt2 --device TARGET`: the evaluation runs on the device, with its runtime and interpreter.

The bundle (and a reference bundle) go over with push.py, the text and the runtime zipapp as files cached by hash
(runtime_pack.py); the device runs ``python3 liteship-runtime.pyz eval-gpt2 ...`` (runtime/text_eval.py main) and
prints the result as JSON, which comes back as the result of the command, with the target added.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from liteship.errors import DeviceError
from liteship.runtime.tflite_file import sha256_file

from .base import last_line, open_target
from .bench import _host_cache
from .push import push_bundle
from .runtime_pack import CachedFile, ensure_files_on_device, runtime_file


def eval_gpt2_on_device(spec: str, bundle: str | Path, text_file: str | Path, *, reference: str | Path | None = None,
                        threads: int | None = None, python: str | None = None, workdir: str | None = None,
                        target_options: dict | None = None, progress: Callable[[str], None] | None = None,
                        timeout_s: float = 3600.0) -> dict:
    say = progress or (lambda message: None)
    text_file = Path(text_file)
    if reference is not None and not (Path(reference) / "manifest.json").is_file():
        raise DeviceError(f"--reference {reference}: on a device the reference must be a bundle (a checkpoint needs "
                          "TensorFlow, which devices do not have)")
    with open_target(spec, **(target_options or {})) as target:
        local = target.kind == "local"
        python = python or (sys.executable if local else "python3")
        workdir = (workdir or target.default_workdir()).rstrip("/")
        say(f"{spec}: pushing {Path(bundle).name}")
        remote_bundle = push_bundle(target, bundle, workdir=workdir, progress=say).remote_path
        remote_reference = push_bundle(target, reference, workdir=workdir, progress=say).remote_path \
            if reference is not None else None
        digest = sha256_file(text_file)
        say(f"{spec}: sending {text_file.name} and the runtime")
        remote_text, runtime = ensure_files_on_device(target, [
            CachedFile(text_file, digest, f"{workdir}/data", f"{digest[:12]}-{text_file.name}"),
            runtime_file(workdir, _host_cache())])
        argv = [python, runtime, "eval-gpt2", remote_bundle, remote_text]
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
