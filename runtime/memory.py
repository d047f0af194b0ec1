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
