"""How liteship writes sizes and memory, everywhere: file sizes in SI units (kB = 1000 B, MB = 10^6 B, as
`ls -l --si` and phone storage show them), memory in binary units (MiB = 2^20 B, as RSS tools show it)."""

from __future__ import annotations


def size_text(n: int | float) -> str:
    """A file size: ``512 B`` below 1 kB, ``48.1 kB`` below 100 kB, ``0.47 MB`` below 1 MB, else ``497.8 MB``."""
    if n < 1000:
        return f"{int(n)} B"
    if n < 100_000:
        return f"{n / 1e3:.1f} kB"
    return f"{n / 1e6:.2f} MB" if n < 1e6 else f"{n / 1e6:.1f} MB"


def memory_text(n: int | float) -> str:
    """A memory amount such as peak RSS: ``123.4 MiB``."""
    return f"{n / 2**20:.1f} MiB"
