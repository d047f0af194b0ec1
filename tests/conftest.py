"""Fixtures every test folder shares. Tests never reach a model hub: HF_HUB_OFFLINE is forced on."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None
needs_tensorflow = pytest.mark.skipif(not HAS_TENSORFLOW, reason="needs the [convert] extra (TensorFlow)")


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(name, size)`` mounts a tmpfs of ``size`` (mount's size=, e.g. "64k") at tmp_path / name, unmounted
    after the test: a small disk to fill up or remount read-only. Skips the test where mounting is not allowed
    (it needs root with CAP_SYS_ADMIN)."""
    mounts = []

    def mount(name: str, size: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True)
        if made.returncode != 0:
            pytest.skip(f"cannot mount a {size} tmpfs here ({made.stderr.decode().strip()}); the full-disk tests "
                        "need root with CAP_SYS_ADMIN")
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(scope="session", autouse=True)
def private_liteship_cache(tmp_path_factory):
    """Caches the runtime writes (extracted bundles, XNNPACK weight caches) go to a temporary folder, not ~."""
    if "LITESHIP_CACHE" not in os.environ:
        os.environ["LITESHIP_CACHE"] = str(tmp_path_factory.mktemp("liteship-cache"))
    yield


@pytest.fixture(scope="session")
def fixture_bundles(tmp_path_factory) -> Path:
    """The shared runtime bundles: from $LITESHIP_TEST_BUNDLES (built by an earlier CI step for the TF-free
    device-like run), or built here when TensorFlow is installed."""
    given = os.environ.get("LITESHIP_TEST_BUNDLES")
    if given:
        path = Path(given)
        assert (path / "COMPLETE").is_file(), f"LITESHIP_TEST_BUNDLES={given} was not built completely"
        return path
    if not HAS_TENSORFLOW:
        pytest.fail("no TensorFlow to build test bundles and LITESHIP_TEST_BUNDLES is not set")
    from tests.fixture_bundles import build_all

    return build_all(tmp_path_factory.mktemp("bundles"))


def cli_runner():
    """A click CliRunner whose result keeps stderr apart from stdout on every click liteship allows (>= 8.0):
    click 8.2 always does and dropped the switch; 8.1 (Debian 12's python3-click, what the armv7l board has) mixes
    them unless told not to."""
    from click.testing import CliRunner

    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()
