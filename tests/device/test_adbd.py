"""The loopback adbd itself: the byte layout and authentication on a raw socket, the sync service through adb-shell.

test_android.py trusts this server to behave like adbd; these tests pin down the parts it relies on.
"""

from __future__ import annotations

import io
import os
import socket
import struct

import pytest

from adbd import AUTH_RSAPUBLICKEY, AUTH_SIGNATURE, AUTH_TOKEN, HEADER, FakeAdbd, pack_message

from liteship.device.android import ensure_adb_key


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return ensure_adb_key(tmp_path_factory.mktemp("adbd") / "adbkey")


@pytest.fixture
def adbd(tmp_path):
    with FakeAdbd(tmp_path / "phone") as server:
        yield server


def read_message(sock: socket.socket):
    header = b""
    while len(header) < HEADER.size:
        chunk = sock.recv(HEADER.size - len(header))
        if not chunk:
            return None
        header += chunk
    cmd, arg0, arg1, length, check, magic = HEADER.unpack(header)
    data = b""
    while len(data) < length:
        data += sock.recv(length - len(data))
    return header[:4], arg0, arg1, data, check, magic ^ 0xFFFFFFFF == cmd


def signer(key):
    from adb_shell.auth.sign_pythonrsa import PythonRSASigner

    return PythonRSASigner.FromRSAKeyPath(str(key))


def test_handshake_bytes_and_rsa_auth(adbd, key):
    with socket.create_connection(("127.0.0.1", adbd.port), timeout=5) as sock:
        sock.sendall(pack_message(b"CNXN", 0x01000000, 256 * 1024, b"host::test\0"))
        cmd, kind, _, token, check, magic_ok = read_message(sock)
        assert (cmd, kind, len(token), magic_ok, check) == (b"AUTH", AUTH_TOKEN, 20, True, sum(token))

        sock.sendall(pack_message(b"AUTH", AUTH_SIGNATURE, 0, b"\0" * 256))  # a wrong signature: a new token
        cmd, kind, _, token2, _, _ = read_message(sock)
        assert (cmd, kind) == (b"AUTH", AUTH_TOKEN) and token2 != token

        sock.sendall(pack_message(b"OPEN", 1, 0, b"shell:id\0"))  # ignored while unauthorized
        sock.sendall(pack_message(b"AUTH", AUTH_RSAPUBLICKEY, 0, signer(key).GetPublicKey().encode() + b"\0"))
        cmd, version, max_payload, banner, _, _ = read_message(sock)
        assert cmd == b"CNXN" and version == 0x01000000 and max_payload == 256 * 1024  # min of both sides
        assert banner.startswith(b"device::") and b"ro.product.model=Loopback ADB" in banner

        sock.sendall(pack_message(b"OPEN", 7, 0, b"reboot:\0"))  # a service it does not offer
        assert read_message(sock)[:3] == (b"CLSE", 0, 7)

    # Next time the key signs the token instead of prompting.
    with socket.create_connection(("127.0.0.1", adbd.port), timeout=5) as sock:
        sock.sendall(pack_message(b"CNXN", 0x01000000, 4096, b"host::test\0"))
        token = read_message(sock)[3]
        sock.sendall(pack_message(b"AUTH", AUTH_SIGNATURE, 0, signer(key).Sign(token)))
        assert read_message(sock)[0] == b"CNXN"
    assert len(adbd.stats.prompts) == 1


def test_a_bad_checksum_drops_the_connection(adbd):
    with socket.create_connection(("127.0.0.1", adbd.port), timeout=5) as sock:
        message = bytearray(pack_message(b"CNXN", 0x01000000, 4096, b"host::test\0"))
        struct.pack_into("<I", message, 16, 12345)  # the checksum field
        sock.sendall(bytes(message))
        assert read_message(sock) is None


def test_sync_service_through_adb_shell(adbd, key, tmp_path):
    from adb_shell import exceptions
    from adb_shell.adb_device import AdbDeviceTcp

    device = AdbDeviceTcp("127.0.0.1", adbd.port, default_transport_timeout_s=5)
    device.connect(rsa_keys=[signer(key)], auth_timeout_s=2)
    data = os.urandom(200_000)
    device.push(io.BytesIO(data), "/data/local/tmp/sub/f.bin", st_mode=0o100640, mtime=1_700_000_000)
    stored = adbd.host_path("/data/local/tmp/sub/f.bin")
    assert stored.read_bytes() == data and int(stored.stat().st_mtime) == 1_700_000_000
    mode, size, mtime = device.stat("/data/local/tmp/sub/f.bin")
    assert (mode & 0o777, size, mtime) == (0o640, 200_000, 1_700_000_000)
    assert device.stat("/data/local/tmp/nope") == (0, 0, 0)
    assert sorted(f.filename for f in device.list("/data/local/tmp/sub")) == [b".", b"..", b"f.bin"]
    out = io.BytesIO()
    device.pull("/data/local/tmp/sub/f.bin", out)
    assert out.getvalue() == data
    with pytest.raises(exceptions.AdbCommandFailureException, match="open failed: No such file"):
        device.pull("/data/local/tmp/nope", io.BytesIO())

    adbd.faults.quota_bytes = adbd.used_bytes() + 10_000
    with pytest.raises(exceptions.PushFailedError, match="No space left on device"):
        device.push(io.BytesIO(data), "/data/local/tmp/big.bin")
    assert adbd.host_path("/data/local/tmp/big.bin").exists() is False  # adbd unlinks a failed file
    device.close()


def test_shell_runs_in_the_sandbox_and_speaks_phone_paths(adbd, key):
    from adb_shell.adb_device import AdbDeviceTcp

    device = AdbDeviceTcp("127.0.0.1", adbd.port, default_transport_timeout_s=5)
    device.connect(rsa_keys=[signer(key)], auth_timeout_s=2)
    assert device.shell("cd /data/local/tmp && pwd && echo err >&2") == "/data/local/tmp\nerr\n"
    assert device.shell("getprop ro.product.model") == "Loopback ADB\n"
    device.shell("echo x > /data/local/tmp/made-here")
    assert adbd.host_path("/data/local/tmp/made-here").read_text() == "x\n"
    assert adbd.stats.shell_commands[-1] == "echo x > /data/local/tmp/made-here"
    device.close()
