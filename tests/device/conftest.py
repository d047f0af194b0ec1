"""Fixtures for the device tests: a real OpenSSH server on loopback, targets pointed at it, a tiny bundle.

Without sshd installed the SSH tests skip with a reason - except in CI (CI=true), where they fail, because CI
installs openssh-server and a skip there would hide a broken setup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.device.sshd import SSHServer, find_sshd


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory):
    if find_sshd() is None:
        if _in_ci():
            pytest.fail("sshd is not installed but CI=true: .ci/run must apt-get install openssh-server")
        pytest.skip("sshd is not installed (apt-get install openssh-server) - the SSH device tests need a real one")
    server = SSHServer(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture
def ssh_env(sshd_server, monkeypatch):
    """Point liteship's ssh at the test client config (the documented LITESHIP_SSH_CONFIG switch)."""
    monkeypatch.setenv("LITESHIP_SSH_CONFIG", str(sshd_server.config))
    return sshd_server


@pytest.fixture
def board(ssh_env, tmp_path):
    """An open ssh target (by ~/.ssh/config-style alias) whose working folder is private to this test."""
    from liteship.device.base import open_target

    workdir = tmp_path / "board-workdir"
    target = open_target("ssh:board", workdir=str(workdir))
    yield target
    target.close()


@pytest.fixture
def remote_python() -> str:
    """The interpreter the 'board' runs the runtime with: this venv's (it has numpy and ai-edge-litert), as a
    board would after `pip install ai-edge-litert numpy`."""
    return sys.executable


def make_tiny_bundle(out_dir: Path) -> Path:
    """A real classifier bundle: y = softmax(x @ W + b) with x (1, 8) and 3 classes, converted by TFLite and
    written by liteship's own bundle writer, plus a labels asset so a push has more than one file."""
    import numpy as np
    import tensorflow as tf

    from liteship.convert.bundle import write_bundle

    class Tiny(tf.Module):
        def __init__(self):
            self.w = tf.Variable(np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32, name="x")])
        def serve(self, x):
            return {"probs": tf.nn.softmax(tf.matmul(x, self.w) + 0.1)}  # (1, 3)

    tiny = Tiny()
    # Passing the module keeps the "serving_default" signature in the .tflite (the runtime runs signatures).
    converter = tf.lite.TFLiteConverter.from_concrete_functions([tiny.serve.get_concrete_function()], tiny)
    return write_bundle(out_dir, converter.convert(), family="classifier", task="classification",
                        quantization="fp32", assets={"labels": ("assets/labels.txt", b"cat\ndog\nbird\n")})


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """Built once per session (TensorFlow conversion takes a few seconds); tests copy it before changing it.

    In the TensorFlow-free CI step (LITESHIP_TEST_BUNDLES set, see tests/fixture_bundles.py) the shared fp32
    classifier stands in, copied under the same name."""
    out = tmp_path_factory.mktemp("bundle") / "tiny-classifier"
    given = os.environ.get("LITESHIP_TEST_BUNDLES")
    if given:
        shutil.copytree(Path(given) / "classifier-fp32", out)
        return out
    return make_tiny_bundle(out)


@pytest.fixture
def userland(tmp_path):
    """userland(kind) -> (shell argv ending in -c, env) for: "dash" or "mksh" (Android's shell) with coreutils, or
    "busybox": busybox sh with ONLY busybox applets on PATH (a small board's userland). toybox is not packaged
    for Debian, so it is not covered by these tests."""

    def make(kind: str) -> tuple[list[str], dict]:
        env = dict(os.environ)
        if kind == "busybox":
            bin_dir = tmp_path / "busybox-bin"
            bin_dir.mkdir(exist_ok=True)
            applets = subprocess.run(["busybox", "--list"], capture_output=True, text=True, check=True).stdout
            for applet in applets.split():
                if not (bin_dir / applet).exists():
                    (bin_dir / applet).symlink_to(shutil.which("busybox"))
            env["PATH"] = str(bin_dir)
            return [str(bin_dir / "sh"), "-c"], env
        return [shutil.which(kind), "-c"], env

    return make


@pytest.fixture(autouse=True)
def _private_caches(tmp_path_factory, monkeypatch):
    """Host-side caches (runtime zipapp, extracted archives, the local target's folder) stay out of $HOME."""
    cache = tmp_path_factory.getbasetemp() / "liteship-cache"
    monkeypatch.setenv("LITESHIP_CACHE", str(cache))
    monkeypatch.delenv("LITESHIP_LOCAL_WORKDIR", raising=False)


@pytest.fixture(autouse=True)
def _no_device_marker_without_device(request):
    if request.node.get_closest_marker("device") and not os.environ.get("LITESHIP_TEST_DEVICE"):
        pytest.skip("set LITESHIP_TEST_DEVICE=ssh:... or adb:... to run against a real device")


# --- the real adbd phone (tests/device/real_adbd.py; owned by the Android tests) ------------------------------


@pytest.fixture
def real_adbd(tmp_path):
    """real_adbd(**options) -> a started RealAdbd (AOSP adbd in its own namespaces), stopped after the test.

    Without the binary (or without root) the tests skip with the reason - except in CI (CI=true), where .ci/run
    builds it with .ci/adbd-build and a skip would hide a broken setup."""
    from tests.device.real_adbd import RealAdbd, missing_requirements

    why = missing_requirements()
    if why:
        if _in_ci():
            pytest.fail(f"CI=true but the real adbd phone cannot run: {why}")
        pytest.skip(why)
    started = []

    def make(**options) -> RealAdbd:
        phone = RealAdbd(tmp_path / f"real-adbd-{len(started)}", **options).start()
        started.append(phone)
        return phone

    yield make
    for phone in started:
        phone.stop()


# --- the SDK's adb server holding a phone (tests/device/host_adb.py) ------------------------------------------


@pytest.fixture
def host_adb_server(tmp_path, tmp_path_factory):
    """host_adb_server(key) -> a started HostAdbServer (Debian's real adb) using ``key`` as its own, stopped after
    the test. Skips without adb - except in CI, where .ci/run installs it."""
    from tests.device.host_adb import HostAdbServer, missing_requirements

    why = missing_requirements()
    if why:
        if _in_ci():
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    started = []

    def make(key: Path) -> HostAdbServer:
        server = HostAdbServer(tmp_path / f"adb-server-{len(started)}", key).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
