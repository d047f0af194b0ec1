"""The host itself as a target, so push/probe/bench work with no device attached (the default device)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Sequence

from liteship.errors import DeviceError
from liteship.runtime.bundle import cache_root
from liteship.runtime.files import atomic_path

from .base import CHUNK, CommandResult, Target


def _default_workdir() -> str:
    # Beside liteship's other caches (LITESHIP_CACHE, as the runtime uses); LITESHIP_LOCAL_WORKDIR moves just this.
    override = os.environ.get("LITESHIP_LOCAL_WORKDIR")
    if override:
        return str(Path(override).expanduser().resolve())
    return str(cache_root().resolve() / "device")


class LocalTarget(Target):
    """Runs argv lists directly with subprocess (no shell), copies files with shutil."""

    kind = "local"

    def __init__(self, name: str = "local", *, workdir: str | None = None):
        super().__init__(name)
        self._workdir = workdir

    @classmethod
    def from_spec(cls, spec: str, *, workdir: str | None = None, **options: Any) -> "LocalTarget":
        if spec != "local":
            raise DeviceError(f"bad local device {spec!r}: it takes no arguments, write just 'local'")
        return cls(spec, workdir=workdir)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        check: bool = True,
    ) -> CommandResult:
        argv = [str(a) for a in argv]
        try:
            proc = subprocess.run(
                argv,
                input=stdin if stdin is not None else b"",
                capture_output=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.name}: `{argv[0]}` timed out after {timeout:g} s") from None
        except OSError as exc:
            raise DeviceError(f"{self.name}: cannot run {argv[0]!r}: {exc.strerror}") from None
        result = CommandResult(
            proc.returncode,
            proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"),
        )
        return self.check_result(argv, result) if check else result

    def put(self, local: Path, remote: str, *, timeout: float | None = None,
            progress: Callable[[int], None] | None = None) -> None:
        self._copy(Path(local), Path(remote), progress)

    def get(self, remote: str, local: Path, *, timeout: float | None = None) -> None:
        self._copy(Path(remote), Path(local))

    def _copy(self, src: Path, dst: Path, progress: Callable[[int], None] | None = None) -> None:
        try:
            with atomic_path(dst) as tmp:
                if progress is None:
                    shutil.copyfile(src, tmp)
                else:
                    with open(src, "rb") as fin, open(tmp, "wb") as fout:
                        sent = 0
                        while chunk := fin.read(CHUNK):
                            fout.write(chunk)
                            sent += len(chunk)
                            progress(sent)
        except OSError as exc:
            raise DeviceError(f"{self.name}: cannot copy {src} to {dst}: {exc.strerror}") from None

    def default_workdir(self) -> str:
        return self._workdir or _default_workdir()
