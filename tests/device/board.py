"""Running liteship's runtime on the device in LITESHIP_TEST_DEVICE, to compare its answers with this host's.

In CI the device is the emulated aarch64 board (.ci/board-up, .ci/board-tests); a real Raspberry Pi works the
same (``LITESHIP_TEST_DEVICE=ssh:pi@raspberrypi.local``). The device needs python3 with numpy and a TFLite
interpreter, nothing of liteship: the code runs from the runtime zipapp that ``liteship bench`` pushes, put on
``sys.path`` (zipimport), with the bundle pushed by liteship's own push.

Environment (all optional but the first):
- LITESHIP_TEST_DEVICE          ssh:ALIAS or ssh:[user@]host[:port] (with LITESHIP_SSH_CONFIG for the alias)
- LITESHIP_TEST_DEVICE_PYTHON   the device's interpreter (default python3)
- LITESHIP_TEST_DEVICE_ABI      what the device must report (CI: aarch64)
- LITESHIP_TEST_DEVICE_OLD_PYTHON  an interpreter there with tflite-runtime older than today's bundles need
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from liteship.device.base import open_target
from liteship.device.push import push_bundle
from liteship.device.runtime_pack import ensure_files_on_device, runtime_file

# Prepended to code run on the device: the pushed zipapp's liteship package becomes importable.
_PRELUDE = "import sys; sys.path.insert(0, sys.argv[1]); del sys.argv[1]\n"


def device_spec() -> str:
    return os.environ["LITESHIP_TEST_DEVICE"]


class DeviceRuntime:
    """A private working folder on the device with the runtime zipapp in it; removed by close()."""

    def __init__(self, spec: str, host_cache: Path, python: str | None = None):
        self.target = open_target(spec)
        self.python = python or os.environ.get("LITESHIP_TEST_DEVICE_PYTHON") or "python3"
        self.workdir = f"{self.target.default_workdir()}/board-tests-{secrets.token_hex(4)}"
        [self.zipapp] = ensure_files_on_device(self.target, [runtime_file(self.workdir, host_cache)])

    def push(self, bundle: Path) -> str:
        """The bundle pushed by liteship's push; returns its folder on the device."""
        return push_bundle(self.target, bundle, workdir=self.workdir).remote_path

    def put_files(self, files: list[Path], folder: str) -> str:
        self.target.run(["mkdir", "-p", folder])
        for path in files:
            self.target.put(path, f"{folder}/{path.name}")
        return folder

    def python_json(self, code: str, *args: str, python: str | None = None, env: dict | None = None,
                    timeout: float = 600):
        """Runs ``code`` with the device's python (liteship's runtime importable) and parses the JSON it prints
        on its last line. ``args`` arrive as sys.argv[1:]; ``env`` adds variables (through env(1))."""
        argv = [python or self.python, "-c", _PRELUDE + code, self.zipapp, *args]
        if env:
            argv = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
        out = self.target.run(argv, timeout=timeout).stdout
        return json.loads(out.strip().splitlines()[-1])

    def run_python(self, code: str, *args: str, python: str | None = None, timeout: float = 600):
        """Like python_json, but returns the CommandResult whatever the exit status."""
        argv = [python or self.python, "-c", _PRELUDE + code, self.zipapp, *args]
        return self.target.run(argv, timeout=timeout, check=False)

    def close(self) -> None:
        try:
            self.target.run(["rm", "-rf", self.workdir])
        finally:
            self.target.close()


# The same code computes the host's answers and, through python_json, the device's.
GREEDY_TOKENS = """
import json
from liteship.runtime.generate import TextGenerator
bundle, prompt, n = sys.argv[1], [int(t) for t in sys.argv[2].split(",")], int(sys.argv[3])
gen = TextGenerator(bundle, threads=1)
print(json.dumps([int(t) for t in gen.generate_ids(prompt, n, temperature=0)]))
"""

SCORES = """
import json
from liteship.runtime.classify import ImageClassifier
from liteship.runtime.images import iter_files
bundle, folder = sys.argv[1], sys.argv[2]
classifier = ImageClassifier(bundle, threads=1)
rows = {}
for p in classifier.iter_classify(iter_files(folder), top_k=classifier.num_classes, batch_size=1):
    d = p.to_dict()
    rows[d["path"].rsplit("/", 1)[-1]] = {t["index"]: t["score"] for t in d["top_k"]}
print(json.dumps({f: [s for _, s in sorted(scores.items())] for f, scores in sorted(rows.items())}))
"""


def assert_same_top5(here: list[float], there: list[float], tol: float, label: str) -> None:
    """The device's class scores equal this host's within ``tol``, and so do its top-5: the same classes in the
    same order wherever the host's own margins (> 2 tol) decide the order. Where two of the host's scores are
    closer than that, different SIMD kernels (x86 vs ARM) may legitimately swap them."""
    import numpy as np

    here_a, there_a = np.asarray(here), np.asarray(there)
    assert here_a.shape == there_a.shape, label
    assert np.abs(here_a - there_a).max() <= tol, (label, here, there)
    host_order = list(np.argsort(-here_a, kind="stable"))
    board_order = list(np.argsort(-there_a, kind="stable"))
    for rank in range(1, 6):  # top-1, top-2, ... top-5 as sets: equal wherever the host's gap below is clear
        gap = here_a[host_order[rank - 1]] - here_a[host_order[rank]] if rank < len(host_order) else np.inf
        if gap > 2 * tol:
            assert set(board_order[:rank]) == set(host_order[:rank]), (label, rank, host_order[:5], board_order[:5])


def run_here(code: str, *args: str):
    """``code`` (one of the snippets above) run in this process, with the same argv convention."""
    import contextlib
    import io
    import sys

    saved = sys.argv
    sys.argv = ["-c", *args]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile("import sys\n" + code, "<board-snippet>", "exec"), {})
    finally:
        sys.argv = saved
    return json.loads(out.getvalue().strip().splitlines()[-1])
