"""`keep_freed_memory`: stop glibc's malloc handing large freed blocks back to the kernel, for this process.

By default glibc serves large allocations with fresh `mmap`s and trims its heap when the top grows free, so
every torch forward pass touches its activations' pages anew: a LiteMedSAM encode at 256 on torch took
436,000 minor page faults and 1.0 s of kernel time per call (1.65 s in all) on a 2-core AMD EPYC Zen 4 VM,
and 0 faults, 1.0 s in all, with the thresholds raised (OpenVINO manages its own buffers: unchanged). The
price is that the process keeps its peak heap (peak RSS of that test 1.28 -> 1.61 GB). The command line
and the benchmark workers call it at start; a notebook user opts in by calling it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV_MALLOC = "MEDSAMLITE_MALLOC"  # "default": leave glibc's allocator as it is
# mallopt parameters (malloc.h) and the value for both: freed blocks below it stay in the heap for reuse
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_BELOW = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module doc); False where not glibc or opted out."""
    if os.environ.get(ENV_MALLOC) == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BELOW)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BELOW))
