"""push_bundle over the real loopback sshd: verification on the device, atomic placement, faults.

The "board" is this machine, so a test can look at (and damage) the remote files directly on disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from liteship.device.base import open_target
from liteship.device.push import SHA256_FUNCTION, push_bundle
from liteship.errors import DeviceError
from liteship.units import size_text


def variant(bundle: Path, dst: Path, files: dict[str, bytes]) -> Path:
    """A copy of ``bundle`` with ``files`` added or replaced and its manifest's hashes updated to match."""
    shutil.copytree(bundle, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    for rel, data in files.items():
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_bytes(data)
        manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(workdir: Path) -> list[str]:
    bundles = workdir / "bundles"
    return sorted(p.name for p in bundles.iterdir() if p.name.startswith(".")) if bundles.exists() else []


class PutSpy:
    """Wraps a target's put to record calls and run faults before/after the n-th one. ``cut_during=NAME``
    streams that file through a pipe and calls ``cut()`` once half of it has reached the device: a connection
    lost in the middle of a file, not between files (a new command would simply reconnect)."""

    def __init__(self, target, before=None, after=None, cut_during=None, cut=None):
        self.target, self.calls, self.before, self.after = target, [], before, after
        self.cut_during, self.cut = cut_during, cut
        self._put = target.put
        target.put = self

    def __call__(self, local, remote, **kw):
        self.calls.append(remote)
        if self.before:
            self.before(len(self.calls), remote)
        if self.cut_during and remote.endswith("/" + self.cut_during):
            self._put_and_cut(Path(local), remote, **kw)
        else:
            self._put(local, remote, **kw)
        if self.after:
            self.after(len(self.calls), remote)

    def _put_and_cut(self, local, remote, **kw):
        data = local.read_bytes()
        half = max(1, len(data) // 2)
        fifo = local.parent.parent / f"fifo-{os.getpid()}-{len(self.calls)}"
        os.mkfifo(fifo)

        def feed():
            pipe = open(fifo, "wb")
            try:
                pipe.write(data[:half])
                pipe.flush()
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and (not os.path.exists(remote)
                                                       or os.path.getsize(remote) < half):
                    time.sleep(0.02)
                self.cut()
                pipe.write(data[half:])
                pipe.close()
            except BrokenPipeError:  # the reader died with the connection, as intended
                pass

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            self._put(fifo, remote, **kw)
        finally:
            feeder.join()
            fifo.unlink()


def test_push_installs_a_verified_copy(board, tiny_bundle):
    result = push_bundle(board, tiny_bundle)
    remote = Path(board.default_workdir()) / "bundles" / "tiny-classifier"
    assert result.remote_path == str(remote)
    assert tree(remote) == tree(tiny_bundle)
    assert sorted(result.sent) == sorted(tree(tiny_bundle))
    assert result.bytes_sent == sum(len(b) for b in tree(tiny_bundle).values())
    assert leftovers(Path(board.default_workdir())) == []


def test_unchanged_files_are_not_sent_again(board, tiny_bundle, tmp_path):
    push_bundle(board, tiny_bundle)
    spy = PutSpy(board)
    again = push_bundle(board, tiny_bundle)
    assert again.unchanged and spy.calls == []

    relabeled = variant(tiny_bundle, tmp_path / "tiny-classifier", {"assets/labels.txt": b"ant\nbee\ncow\n"})
    result = push_bundle(board, relabeled)
    assert sorted(result.sent) == ["assets/labels.txt", "manifest.json"]
    assert result.reused == ["model.tflite"]
    assert [Path(c).name for c in spy.calls] == ["labels.txt", "manifest.json"]
    remote = Path(result.remote_path)
    assert tree(remote) == tree(relabeled)


def test_checksum_mismatch_on_the_device_rolls_back(board, tiny_bundle, tmp_path):
    good = push_bundle(board, tiny_bundle)
    before = tree(Path(good.remote_path))
    changed = variant(tiny_bundle, tmp_path / "tiny-classifier", {"assets/labels.txt": b"x\ny\nz\n"})

    def corrupt(n, remote):  # flip a byte of the file once it has landed on the "device"
        if remote.endswith("labels.txt"):
            data = bytearray(Path(remote).read_bytes())
            data[0] ^= 0xFF
            Path(remote).write_bytes(bytes(data))

    PutSpy(board, after=corrupt)
    with pytest.raises(DeviceError) as info:
        push_bundle(board, changed)
    assert str(info.value).startswith("ssh:board: assets/labels.txt failed its sha256 check on the device")
    assert tree(Path(good.remote_path)) == before  # the old bundle is untouched
    assert leftovers(Path(board.default_workdir())) == []


def test_connection_dropped_mid_file_leaves_no_partial_folder(board, ssh_env, tiny_bundle):
    spy = PutSpy(board, cut_during="model.tflite", cut=lambda: ssh_env.kill_sessions())
    with pytest.raises(DeviceError, match="^ssh:board: ssh connection failed or dropped"):
        push_bundle(board, tiny_bundle)
    assert spy.calls[-1].endswith("/model.tflite")
    workdir = Path(board.default_workdir())
    assert not (workdir / "bundles" / "tiny-classifier").exists()
    # The board is reachable again, so the failed push removed its partial folder itself.
    assert leftovers(workdir) == []


def test_server_gone_mid_push_then_next_push_sweeps_the_partial(ssh_env, tiny_bundle, tmp_path, monkeypatch):
    from tests.device.sshd import SSHServer

    server = SSHServer(tmp_path / "own-sshd").start()
    monkeypatch.setenv("LITESHIP_SSH_CONFIG", str(server.config))
    workdir = tmp_path / "wd"
    try:
        with open_target("ssh:board", workdir=str(workdir)) as target:
            PutSpy(target, cut_during="model.tflite", cut=server.stop)
            with pytest.raises(DeviceError, match="^ssh:board: "):
                push_bundle(target, tiny_bundle)
        assert not (workdir / "bundles" / "tiny-classifier").exists()
        # nobody could remove the partial folder or the push's lock: the server was down
        assert [n for n in leftovers(workdir) if not n.endswith(".lock")] != []
        assert len([n for n in leftovers(workdir) if not n.endswith(".lock")]) == 1
        server.start()
        with open_target("ssh:board", workdir=str(workdir)) as target:
            push_bundle(target, tiny_bundle)
        assert leftovers(workdir) == []
        assert tree(workdir / "bundles" / "tiny-classifier") == tree(tiny_bundle)
    finally:
        server.stop()


def test_hostile_names_are_quoted(board, tiny_bundle, tmp_path):
    odd = tmp_path / "my bundles" / "$(touch pwned) `touch pwned2`; x"
    odd.parent.mkdir()
    shutil.copytree(tiny_bundle, odd)
    result = push_bundle(board, odd)
    assert Path(result.remote_path).name == odd.name
    assert tree(Path(result.remote_path)) == tree(odd)
    for where in (Path.home(), Path.cwd(), Path(board.default_workdir()), Path(board.default_workdir()) / "bundles"):
        assert not (where / "pwned").exists() and not (where / "pwned2").exists()


@pytest.fixture
def tiny_disk(tmpfs):
    """A 1 MiB tmpfs as the board's working folder (needs root / CAP_SYS_ADMIN)."""
    return tmpfs("tiny-disk", "1m")


def test_full_disk_is_refused_before_sending(ssh_env, tiny_bundle, tiny_disk, tmp_path):
    big = variant(tiny_bundle, tmp_path / "big", {"assets/blob.bin": os.urandom(2 << 20)})
    with open_target("ssh:board", workdir=str(tiny_disk)) as target:
        spy = PutSpy(target)
        with pytest.raises(DeviceError, match=r"^ssh:board: not enough free space in .*: the push needs 2\.\d MB"):
            push_bundle(target, big)
    assert spy.calls == []
    assert leftovers(tiny_disk) == []


def test_disk_filling_up_during_the_push_is_a_clear_error(ssh_env, tiny_bundle, tiny_disk, tmp_path):
    blob = variant(tiny_bundle, tmp_path / "blob", {"assets/blob.bin": os.urandom(400 << 10)})

    def fill(n, remote):  # someone else takes the space after the free-space check
        if n == 1:
            (tiny_disk / "filler").write_bytes(b"\0" * (700 << 10))

    with open_target("ssh:board", workdir=str(tiny_disk)) as target:
        PutSpy(target, before=fill)
        with pytest.raises(DeviceError, match="No space left on device"):
            push_bundle(target, blob)
    assert not (tiny_disk / "bundles" / "blob").exists()
    assert leftovers(tiny_disk) == []


def test_write_failing_mid_file_rolls_back(tiny_bundle, tmp_path, monkeypatch):
    """Runs without root: a session file-size limit (RLIMIT_FSIZE) makes the board's writes fail part way, as
    a disk filling up does; the push must fail naming the file and leave nothing behind."""
    from tests.device.sshd import SSHServer

    blob = variant(tiny_bundle, tmp_path / "blob", {"assets/blob.bin": os.urandom(400 << 10)})
    server = SSHServer(tmp_path / "limited-sshd", file_size_limit=256 << 10).start()
    monkeypatch.setenv("LITESHIP_SSH_CONFIG", str(server.config))
    workdir = tmp_path / "wd"
    try:
        with open_target("ssh:board", workdir=str(workdir)) as target:
            with pytest.raises(DeviceError, match=r"^ssh:board: cannot write .*/assets/blob\.bin: .*limit"):
                push_bundle(target, blob)
    finally:
        server.stop()
    assert not (workdir / "bundles" / "blob").exists()
    assert leftovers(workdir) == []


def test_sha256_falls_back_to_python3(tmp_path):
    """On a device whose only hashing tool is python3 the verification still works."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))  # the real binary, not a shim
    (tmp_path / "a file").write_bytes(b"liteship")
    script = SHA256_FUNCTION + f'echo "tool=$_lsh_tool"; hash_files {tmp_path} "a file" missing\n'
    out = subprocess.run(["/bin/sh", "-c", script], env={"PATH": str(bin_dir)}, capture_output=True, text=True)
    assert out.stdout.splitlines() == ["tool=python3", f"H 0 {hashlib.sha256(b'liteship').hexdigest()}", "H 1 -"]


def test_push_to_local_target(tiny_bundle, tmp_path):
    with open_target("local", workdir=str(tmp_path / "wd")) as target:
        result = push_bundle(target, tiny_bundle)
    assert tree(Path(result.remote_path)) == tree(tiny_bundle)


def test_damaged_local_bundle_is_refused_before_connecting(board, tiny_bundle, tmp_path):
    from liteship.errors import BundleError

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "assets" / "labels.txt").write_bytes(b"tampered\n")
    spy = PutSpy(board)
    with pytest.raises(BundleError, match="labels.txt"):
        push_bundle(board, broken)
    assert spy.calls == []


def test_push_cli(ssh_env, tiny_bundle, tmp_path, capsys):
    from liteship.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["device", "push", str(tiny_bundle), "ssh:board", "--workdir", str(tmp_path / "wd"), "--json"])
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["remote_path"] == str(tmp_path / "wd" / "bundles" / "tiny-classifier")
    assert tree(Path(result["remote_path"])) == tree(tiny_bundle)
    assert "installed at" in captured.err  # progress goes to stderr, the answer to stdout

    with pytest.raises(SystemExit) as exit_info:
        main(["device", "push", str(tiny_bundle), "ssh:board-unknown"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("error: ssh:board-unknown: the host key is not in known_hosts")


@pytest.mark.parametrize("kind", [k for k in ("dash", "mksh", "busybox") if shutil.which(k)])
def test_device_side_hashing_under_each_userland(kind, userland, tmp_path):
    from liteship.device.push import VERIFY_FAILED

    argv, env = userland(kind)
    data = {"a b": b"liteship", "$(x)": b"", "sub/c": os.urandom(3000)}
    for name, content in data.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content)
    names = sorted(data)
    want = {n: hashlib.sha256(data[n]).hexdigest() for n in names}
    quoted = " ".join(f"'{n}'" for n in names)
    out = subprocess.run(argv + [SHA256_FUNCTION + f"hash_files {tmp_path} {quoted} missing"], env=env,
                         capture_output=True, text=True)
    assert out.stdout.splitlines() == [f"H {i} {want[n]}" for i, n in enumerate(names)] + [f"H {len(names)} -"]
    pairs = " ".join(f"'{n}' {want[n]}" for n in names)
    ok = subprocess.run(argv + [SHA256_FUNCTION + f"verify_files {tmp_path} {pairs} || exit {VERIFY_FAILED}"],
                        env=env, capture_output=True, text=True)
    assert ok.returncode == 0
    wrong = f"verify_files {tmp_path} 'a b' {'0' * 64} || exit {VERIFY_FAILED}"
    bad = subprocess.run(argv + [SHA256_FUNCTION + wrong], env=env, capture_output=True, text=True)
    assert bad.returncode == VERIFY_FAILED


def test_a_second_push_of_one_name_says_another_is_in_progress(tiny_bundle, tmp_path):
    """Two pushes of one bundle name to one device at once: the second refuses with a clear reason instead of
    deleting the first one's partial folder; the first completes; the lock is gone afterwards."""
    workdir = tmp_path / "wd"
    inside, release = threading.Event(), threading.Event()
    errors = []
    with open_target("local", workdir=str(workdir)) as first, open_target("local", workdir=str(workdir)) as second:
        put = first.put

        def slow_put(*args, **kwargs):
            inside.set()
            assert release.wait(30)
            return put(*args, **kwargs)

        first.put = slow_put

        def run_first():
            try:
                push_bundle(first, tiny_bundle)
            except Exception as exc:  # reported below
                errors.append(exc)

        thread = threading.Thread(target=run_first)
        thread.start()
        assert inside.wait(30)
        with pytest.raises(DeviceError, match="another push of tiny-classifier is in progress"):
            push_bundle(second, tiny_bundle)
        release.set()
        thread.join(60)
    assert errors == []
    assert tree(workdir / "bundles" / "tiny-classifier") == tree(tiny_bundle)
    assert leftovers(workdir) == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [True, False])
def test_a_large_push_shows_bytes_rate_and_eta(board, tiny_bundle, tmp_path, monkeypatch, tty):
    """Inside one large file: bytes sent, MB/s and ETA redrawn on a terminal (the ssh transport counts what it
    feeds ssh); a line per stage (each file, then the device's check) and per quarter otherwise."""
    import functools

    import liteship.device.push as push

    big = variant(tiny_bundle, tmp_path / "big", {"assets/big.bin": os.urandom(12_000_000)})
    stream = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(push, "Meter", functools.partial(push.Meter, min_interval_s=0))  # every chunk drawn
    said = []
    result = push_bundle(board, big, progress=said.append)
    assert tree(Path(result.remote_path)) == tree(big)
    total_mb = sum(f.stat().st_size for f in big.rglob("*") if f.is_file() and f.name != "manifest.json") / 1e6
    text = stream.getvalue()
    draws = text.split("\r\033[K")[1:] if tty else text.splitlines()
    sent = [float(d.split("sending assets/big.bin ")[1].split("/")[0]) for d in draws if "assets/big.bin" in d]
    assert len(sent) >= (4 if tty else 2) and sent == sorted(sent), draws  # 1 MiB at a time on a terminal
    assert any("ETA" in d and " MB/s" in d for d in draws), draws
    assert draws[-1].startswith("[liteship] ssh:board: sending ") and f"{total_mb:.1f}/{total_mb:.1f} MB" in draws[-1]
    assert text.count("\n") == (1 if tty else len(draws))  # a terminal keeps one line, ended once
    stages = [m for m in said if "sending" in m]
    assert stages == ([] if tty else [f"ssh:board: sending {n} ({size_text((big / n).stat().st_size)})"
                                      for n in sorted(result.sent)])
    assert any("sha256 on the device" in m for m in said) and "installed at" in said[-1]


def test_local_put_reports_bytes_per_chunk(tmp_path):
    data = os.urandom(3_500_000)
    (tmp_path / "blob").write_bytes(data)
    counts = []
    with open_target("local", workdir=str(tmp_path / "wd")) as target:
        target.put(tmp_path / "blob", str(tmp_path / "copy"), progress=counts.append)
    assert counts == [1 << 20, 2 << 20, 3 << 20, len(data)]
    assert (tmp_path / "copy").read_bytes() == data
