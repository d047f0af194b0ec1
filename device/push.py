"""Push a bundle to any target: hashes checked on the device, atomic placement, unchanged files not re-sent.

Only ``Target.run/shell/put`` are used, so every target kind gets the same guarantees:

1. one scan script: make ``<workdir>/bundles``, sweep the partial (and swapped-out) folders of this bundle name
   that a dropped connection left behind (so two pushes of one name to one device must not overlap), find a
   sha256 tool, read the free space, and hash the files of the bundle already installed under that name;
2. refuse early when the files to send do not fit (``df``);
3. build ``<workdir>/bundles/.<name>.partial-<random>``: files whose hash is already on the device are linked (or
   copied) device-side, the rest are sent with ``put``;
4. hash every file in the partial folder ON the device and compare with the manifest's ``files`` (and the local
   manifest.json); any difference is an error naming the file;
5. swap it into ``<workdir>/bundles/<name>`` with two renames: the name holds the old bundle or the new one,
   never a mix (for the instant between the renames, neither).

Any failure removes the partial folder (and if the connection itself is gone, the next push sweeps it), then raises
one DeviceError. The installed bundle is only ever a complete, verified one.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from liteship.errors import BundleError, DeviceError
from liteship.progress import Meter
from liteship.runtime.bundle import MANIFEST_NAME, MODEL_NAME
from liteship.runtime.files import sha256_file
from liteship.units import size_text

from .base import Target, quote

_HEX64 = re.compile(r"^[0-9a-f]{64}$")

# A shell function printing the sha256 of stdin, with whatever the device has: coreutils/toybox/busybox
# sha256sum, toybox or busybox as multi-call binaries, BSD/macOS shasum, and python3 as the last resort.
SHA256_FUNCTION = r"""
_lsh_tool=
if command -v sha256sum >/dev/null 2>&1; then _lsh_tool=sha256sum
elif command -v toybox >/dev/null 2>&1 && toybox sha256sum </dev/null >/dev/null 2>&1; then _lsh_tool="toybox sha256sum"
elif command -v busybox >/dev/null 2>&1 && busybox sha256sum </dev/null >/dev/null 2>&1; then _lsh_tool="busybox sha256sum"
elif command -v shasum >/dev/null 2>&1; then _lsh_tool="shasum -a 256"
elif command -v python3 >/dev/null 2>&1; then _lsh_tool=python3
fi
lsh_sha256() {
  case "$_lsh_tool" in
    python3) python3 -c 'import hashlib,sys
h=hashlib.sha256()
for b in iter(lambda: sys.stdin.buffer.read(1<<20), b""): h.update(b)
print(h.hexdigest())' ;;
    "") return 127 ;;
    *) $_lsh_tool ;;
  esac
}
# hash_files DIR FILE...: one line per file, "H <index> <sha256>" or "H <index> -" when absent/unreadable.
hash_files() {
  _d=$1; shift; _i=0
  for _f in "$@"; do
    if [ -f "$_d/$_f" ]; then
      _h=$(lsh_sha256 < "$_d/$_f" 2>/dev/null) || _h=-
      echo "H $_i ${_h%% *}"
    else
      echo "H $_i -"
    fi
    _i=$((_i + 1))
  done
}
# verify_files DIR NAME SHA256 [NAME SHA256]...: prints hash_files lines; fails unless every file matches.
verify_files() {
  _d=$1; shift; _i=0; _bad=0
  while [ $# -ge 2 ]; do
    _h=-
    if [ -f "$_d/$1" ]; then _h=$(lsh_sha256 < "$_d/$1" 2>/dev/null) || _h=-; fi
    _h=${_h%% *}
    echo "H $_i $_h"
    [ "$_h" = "$2" ] || _bad=1
    _i=$((_i + 1)); shift 2
  done
  return $_bad
}
"""
VERIFY_FAILED = 97  # exit status of a script whose verify_files found a difference


@dataclass
class LocalBundle:
    """A bundle on the host reduced to what a push needs: its name and, per file, where it is and its hash."""

    name: str
    files: dict[str, tuple[str, int]]  # relative posix path on the device -> (sha256, size); has manifest.json
    sources: dict[str, Path]           # the same paths -> the file on the host

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files.values())


@dataclass
class PushResult:
    target: str
    remote_path: str
    sent: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    seconds: float = 0.0
    unchanged: bool = False

    def as_dict(self) -> dict:
        return {"target": self.target, "remote_path": self.remote_path, "sent": self.sent, "reused": self.reused,
                "bytes_sent": self.bytes_sent, "seconds": round(self.seconds, 3), "unchanged": self.unchanged}


def _bundle_name(path: Path) -> str:
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip", ".tflite"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _safe_relpath(rel: str, where: Path) -> str:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not rel or "\n" in rel or "\\" in rel:
        raise BundleError(f"{where}: manifest lists an unsafe file name {rel!r}")
    return p.as_posix()


def load_local_bundle(path: str | Path, *, name: str | None = None) -> LocalBundle:
    """Open and verify a bundle folder, .zip/.tar(.gz) or a lone .tflite on the host (BundleError if damaged)."""
    from liteship.runtime.bundle import Bundle

    path = Path(path)
    bundle = Bundle.open(path, verify=True)
    bundle_name = name or _bundle_name(path)
    if bundle_name in ("", ".", "..") or "/" in bundle_name or "\n" in bundle_name:
        raise DeviceError(f"cannot use {bundle_name!r} as a bundle name on a device")
    if path.is_file() and path.suffix == ".tflite":
        # A lone model travels as <name>/model.tflite (its manifest, if any, is embedded in it).
        return LocalBundle(bundle_name, {MODEL_NAME: (sha256_file(path), path.stat().st_size)}, {MODEL_NAME: path})
    files, sources = {}, {}
    for rel, entry in sorted((bundle.manifest.get("files") or {}).items()):
        rel = _safe_relpath(rel, bundle.root)
        files[rel] = (entry["sha256"], int(entry.get("size", (bundle.root / rel).stat().st_size)))
        sources[rel] = bundle.root / rel
    manifest = bundle.root / MANIFEST_NAME
    files[MANIFEST_NAME] = (sha256_file(manifest), manifest.stat().st_size)
    sources[MANIFEST_NAME] = manifest
    return LocalBundle(bundle_name, files, sources)


def parse_hashes(stdout: str, names: list[str]) -> dict[str, str | None]:
    found: dict[str, str | None] = {n: None for n in names}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "H" and parts[1].isdigit() and int(parts[1]) < len(names):
            value = parts[2].lower()
            found[names[int(parts[1])]] = value if _HEX64.match(value) else None
    return found


def _parse_df_free(line: str) -> int | None:
    """Free bytes from one POSIX ``df -Pk`` line (the field before "Use%"; file system names may hold spaces)."""
    fields = line.split()
    for i, f in enumerate(fields):
        if f.endswith("%") and i >= 1 and fields[i - 1].isdigit():
            return int(fields[i - 1]) * 1024
    return None


def bundles_dir(workdir: str) -> str:
    return f"{workdir.rstrip('/')}/bundles"


def push_bundle(
    target: Target,
    bundle_path: str | Path,
    *,
    workdir: str | None = None,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
    min_bytes_per_s: float = 200_000,
) -> PushResult:
    """Push a bundle to ``target`` (see the module docstring) and return where it is and what was sent.

    ``min_bytes_per_s`` sets each file's timeout (plus 60 s): a link slower than that is treated as dropped.
    """
    say = progress or _quiet
    started = time.monotonic()
    local = load_local_bundle(bundle_path, name=name)
    workdir = workdir or target.default_workdir()
    if not workdir.startswith("/"):
        raise DeviceError(f"{target.name}: the working folder must be an absolute path, not {workdir!r}")
    bdir = bundles_dir(workdir)
    final = f"{bdir}/{local.name}"
    names = sorted(local.files)
    result = PushResult(target.name, final)

    # 1. scan: one round trip. It first takes the per-name lock, so a second push of this name waits its turn
    # instead of sweeping the first one's partial folder.
    lock = Lock(f"{bdir}/.{local.name}.lock")
    scan = (
        SHA256_FUNCTION
        + f"mkdir -p {quote(bdir)} || exit 3\n"
        + lock.acquire_script()
        + f"rm -rf {quote(bdir + '/.' + local.name + '.partial-')}* {quote(bdir + '/.' + local.name + '.old-')}* "
        + "2>/dev/null\n"
        + 'echo "TOOL ${_lsh_tool:-none}"\n'
        + f'echo "DF $(df -Pk {quote(bdir)} 2>/dev/null | tail -n 1)"\n'
        + f"hash_files {quote(final)} {' '.join(quote(n) for n in names)}\n"
    )
    out = lock.take(target, scan, local.name)
    try:
        return _push_locked(target, local, out, result, bdir=bdir, final=final, names=names, say=say,
                            started=started, min_bytes_per_s=min_bytes_per_s)
    finally:
        lock.release(target)


def _push_locked(target, local, out, result, *, bdir, final, names, say, started, min_bytes_per_s):
    lines = out.stdout.splitlines()
    tool = next((l[5:] for l in lines if l.startswith("TOOL ")), "none")
    if tool == "none":
        raise DeviceError(f"{target.name}: no sha256 tool on the device (sha256sum, toybox, busybox, shasum or "
                          f"python3); cannot verify a push")
    df_line = next((l[3:] for l in lines if l.startswith("DF ")), "")
    free = _parse_df_free(df_line)
    existing = parse_hashes(out.stdout, names)

    reuse = [n for n in names if existing[n] == local.files[n][0]]
    send = [n for n in names if n not in reuse]
    if not send:
        say(f"{target.name}: {local.name} is already on the device, unchanged")
        result.reused, result.unchanged = reuse, True
        result.seconds = time.monotonic() - started
        return result

    # 2. space: the files to send, plus 64 KiB for directory blocks (linked files cost nothing).
    need = sum(local.files[n][1] for n in send) + (64 << 10)
    if free is not None and free < need:
        raise DeviceError(f"{target.name}: not enough free space in {bdir}: the push needs {size_text(need)}, "
                          f"{size_text(free)} free (delete old bundles or pick another --workdir)")

    partial = f"{bdir}/.{local.name}.partial-{secrets.token_hex(4)}"
    try:
        # 3. the partial folder: folders, reused files linked (or copied where links are not allowed).
        dirs = sorted({str(PurePosixPath(partial, n).parent) for n in names})
        setup = [f"mkdir -p {' '.join(quote(d) for d in dirs)} || exit 1"]
        for n in reuse:
            src, dst = quote(f"{final}/{n}"), quote(f"{partial}/{n}")
            setup.append(f"ln {src} {dst} 2>/dev/null || cp {src} {dst} || exit 1")
        target.shell("\n".join(setup) + "\n", timeout=120)

        meter = _send_meter(target, local, send, say)
        for n in send:
            size = local.files[n][1]
            if meter is None or not meter.tty:  # a line per stage; a terminal has the meter's one line instead
                say(f"{target.name}: sending {n} ({size_text(size)})")
            before = result.bytes_sent
            if meter is None:
                target.put(local.sources[n], f"{partial}/{n}", timeout=60 + size / min_bytes_per_s)
            else:
                meter.label = f"{target.name}: sending {n}"
                target.put(local.sources[n], f"{partial}/{n}", timeout=60 + size / min_bytes_per_s,
                           progress=lambda sent: meter(before + min(sent, size)))
            result.bytes_sent += size
            if meter is not None:
                meter(result.bytes_sent)
        result.sent, result.reused = send, reuse
        say(f"{target.name}: checking {len(names)} files' sha256 on the device")

        # 4 + 5. verify every file on the device, and only then swap it in with renames (one round trip);
        # the old bundle is restored if the second rename fails.
        old = f"{bdir}/.{local.name}.old-{secrets.token_hex(4)}"
        qf, qp, qo = quote(final), quote(partial), quote(old)
        pairs = " ".join(f"{quote(n)} {local.files[n][0]}" for n in names)
        done = target.shell(
            SHA256_FUNCTION
            + f"verify_files {qp} {pairs} || exit {VERIFY_FAILED}\n"
            + f"if [ -e {qf} ]; then mv {qf} {qo} || exit 1; fi\n"
            + f"if mv {qp} {qf}; then rm -rf {qo}; else [ -e {qo} ] && mv {qo} {qf}; exit 1; fi\n",
            timeout=600, check=False,
        )
        if done.returncode == VERIFY_FAILED:
            got = parse_hashes(done.stdout, names)
            n = next(n for n in names if got[n] != local.files[n][0])
            raise DeviceError(f"{target.name}: {n} failed its sha256 check on the device (got "
                              f"{(got[n] or 'missing')[:12]}, expected {local.files[n][0][:12]}); "
                              f"the push was rolled back")
        target.check_result("install the verified bundle", done)
    except BaseException:
        _cleanup(target, partial)
        raise
    result.seconds = time.monotonic() - started
    say(f"{target.name}: {local.name} installed at {final} ({len(send)} sent, {len(reuse)} unchanged)")
    return result


def _send_meter(target: Target, local: LocalBundle, send: list[str], say) -> Meter | None:
    """Bytes sent, rate and ETA across the files to send (liteship.progress.Meter, on stderr), when the caller
    follows progress and the target's put reports it (a third-party kind's put may not take ``progress``)."""
    import inspect

    params = inspect.signature(target.put).parameters.values()
    if say is _quiet or not any(p.name == "progress" or p.kind is p.VAR_KEYWORD for p in params):
        return None
    return Meter(f"{target.name}: sending", sum(local.files[n][1] for n in send), unit="MB", scale=1e6)


def _quiet(message: str) -> None:
    pass


# Pushes of this process that hold a lock: a lock naming this process but none of these was left by a push that
# failed while the device was unreachable, and is stale.
_ACTIVE_LOCKS: set[str] = set()
LOCK_STALE_AFTER_S = 6 * 3600


class Lock:
    """A per-name lock folder on the device (``mkdir`` is atomic on every file system). Its ``owner`` file says
    ``HOST PID TOKEN EPOCH``; a lock whose process is gone (same host) or that is older than six hours is stale."""

    def __init__(self, path: str):
        self.path = path
        self.token = secrets.token_hex(8)
        self.owner = f"{socket.gethostname()} {os.getpid()} {self.token}"
        self.held = False

    def acquire_script(self, force: bool = False) -> str:
        q = quote(self.path)
        return ((f"rm -rf {q}\n" if force else "")
                + f"if mkdir {q} 2>/dev/null; then echo {quote(self.owner)} \"$(date +%s)\" > {q}/owner\n"
                + f'else echo "LOCKED $(cat {q}/owner 2>/dev/null) NOW $(date +%s)"; exit 0; fi\n')

    def take(self, target: Target, scan: str, name: str):
        for attempt in range(2):
            out = target.shell(scan, timeout=120)
            locked = next((line for line in out.stdout.splitlines() if line.startswith("LOCKED")), None)
            if locked is None:
                self.held = True
                _ACTIVE_LOCKS.add(self.token)
                return out
            if attempt == 0 and self._stale(locked):
                scan = scan.replace(self.acquire_script(), self.acquire_script(force=True))
                continue
            raise DeviceError(f"{target.name}: another push of {name} is in progress (lock {self.path}); "
                              "try again when it has finished")
        raise AssertionError("unreachable")

    @staticmethod
    def _stale(line: str) -> bool:
        parts = line.split()  # LOCKED HOST PID TOKEN EPOCH NOW NOW_EPOCH
        if len(parts) != 7 or not parts[2].isdigit():
            return True  # a lock without a readable owner: its writer died between mkdir and echo
        host, pid, token, since, now = parts[1], int(parts[2]), parts[3], parts[4], parts[6]
        if host == socket.gethostname():
            if pid == os.getpid():
                return token not in _ACTIVE_LOCKS
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
        return since.isdigit() and now.isdigit() and int(now) - int(since) > LOCK_STALE_AFTER_S

    def release(self, target: Target) -> None:
        if not self.held:
            return
        _ACTIVE_LOCKS.discard(self.token)
        q = quote(self.path)
        try:  # only our own lock: a stale-lock takeover by another push must not be undone
            target.shell(f'case "$(cat {q}/owner 2>/dev/null)" in *{self.token}*) rm -rf {q};; esac\n',
                         timeout=30, check=False)
        except Exception:  # best effort: an unreachable device keeps the lock; it is stale for the next push
            pass


def _cleanup(target: Target, partial: str) -> None:
    """Best effort: a dead connection cannot clean up now; the next push to this target sweeps the folder."""
    try:
        target.run(["rm", "-rf", partial], timeout=30, check=False)
    except Exception:
        pass

