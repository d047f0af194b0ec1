"""This process's peak memory, as every benchmark and the converter report it."""

from __future__ import annotations

import sys


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
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value


def unmap_large_blocks() -> bool:
    """From now on, have glibc serve every allocation of MMAP_THRESHOLD or more with a map of its own, given back to
    the system when it is freed. By default glibc raises that threshold each time such a block is freed (up to 32
    MiB), after which large blocks come from the heap and stay in it, freed but resident: LiteRT re-plans a
    signature's arena each time its shapes change (a GPT-2 prefill chunk at a new cache size), and those arenas
    then piled up in the heap (+8 MiB of peak RSS at a 896-token context of GPT-2 124M). Setting the threshold
    turns the adjustment off, for the whole process. True where it was set (glibc); elsewhere nothing changes."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt, macOS and Windows no libc.so)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
