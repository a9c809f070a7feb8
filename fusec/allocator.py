"""The host allocator's settings for a fusec process: the dealer and the servers churn through
numpy temporaries of tens of megabytes, field after field of every key set.

glibc serves each allocation from 128 KiB up (its default, raised dynamically only after a free)
with fresh pages from ``mmap`` and unmaps them on free, so every such temporary page-faults anew:
the CPU dealer of BERT-base took 780,000 minor faults and 42 s per set. Raising the threshold to
glibc's largest (32 MiB) and keeping freed memory in the heap instead of trimming it takes that
to 430,000 faults and 34 s (this sandbox, two cores, ``fusec keygen`` four runs). Arrays above the
threshold (a set's buffer) still come from ``mmap``. Elsewhere than glibc (macOS, musl) nothing
changes.
"""
from __future__ import annotations

import ctypes
import sys

__all__ = ["tune_host_allocator"]

#: mallopt's parameters (glibc's malloc.h) and the values fusec sets.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20,       # glibc's largest: 32 MiB on 64-bit hosts
            M_TRIM_THRESHOLD: (1 << 31) - 1,  # keep up to 2 GiB of freed heap for the next field
            M_TOP_PAD: 256 << 20}             # and grow the heap 256 MiB at a time

_done: bool | None = None


def tune_host_allocator() -> bool:
    """Apply :data:`SETTINGS` once per process through glibc's ``mallopt``; False where the C
    library has none (or refuses one)."""
    global _done
    if _done is None:
        _done = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (OSError, AttributeError):
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _done = all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    return _done
