"""This process's peak memory, as every benchmark and the converter report it."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process so far (VmHWM), or None where the OS does not say.

    The kernel keeps this high-water mark itself, so a read at the end of a run sees the whole run's peak; the
    difference between two reads is what happened in between (benchmark_model's "memory footprint delta" is the
    same difference of ``ru_maxrss``, which is VmHWM)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024
    except (ImportError, OSError):
        return None


M_MMAP_THRESHOLD = -3  # glibc's <malloc.h> mallopt parameter
PLANNING_MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value
STEADY_MMAP_THRESHOLD = 1 << 20


def set_mmap_threshold(size: int) -> bool:
    """Have glibc serve every allocation of ``size`` bytes or more with a map of its own, given back to the system
    when it is freed, and stop it moving that threshold: by default glibc raises it each time such a block is
    freed (up to 32 MiB), after which large blocks come from the heap and stay in it, freed but resident. For the
    whole process. True where it was set (glibc); elsewhere nothing changes."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt, macOS and Windows no libc.so)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, size) == 1


@contextlib.contextmanager
def large_blocks_unmapped() -> Iterator[None]:
    """While LiteRT (re-)plans a model's memory, every block of PLANNING_MMAP_THRESHOLD (128 KiB) or more is a map
    of its own: a GPT-2 prefill re-plans its arena at every new chunk shape, and with glibc's moving threshold
    those arenas piled up in the heap, freed but resident (+8 MiB of peak RSS at a 896-token context of GPT-2
    124M). Afterwards the threshold stays fixed at STEADY_MMAP_THRESHOLD (1 MiB), so that a decode step's copy
    of its logits (200 KB at 124M) comes from the heap: as a map of its own it cost ~95 us a step."""
    _planning.append(True)  # nested uses (a growth inside a prefill) keep the outer one's threshold
    if len(_planning) == 1:
        set_mmap_threshold(PLANNING_MMAP_THRESHOLD)
    try:
        yield
    finally:
        _planning.pop()
        if not _planning:
            set_mmap_threshold(STEADY_MMAP_THRESHOLD)


_planning: list = []
