"""keep_freed_memory: freed large blocks are reused without new page faults (glibc), and it can be opted out of."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys


# as a forward pass does: allocate and touch 16 blocks of 2 MiB, free them all, ten times; report the minor
# page faults of the last nine rounds (2 MiB: below numpy's huge-page threshold, so 4 KiB pages)
PROBE = """
import json, resource, sys
import numpy as np
from medsamlite.runtime.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def forward():
    return [np.ones(1 << 18) for _ in range(16)]
forward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    forward()
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def probe(mode: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout)


def test_freed_blocks_are_reused_without_page_faults() -> None:
    plain, kept = probe("plain"), probe("keep")
    assert not plain["kept"] and kept["kept"] == GLIBC  # elsewhere it declines and changes nothing
    if GLIBC:
        assert plain["faults"] >= 9 * 16 * 512 * 0.9  # every round touches its 16 x 512 pages of 4 KiB anew
        assert kept["faults"] < 500


def test_medsamlite_malloc_default_opts_out() -> None:
    assert not probe("keep", MEDSAMLITE_MALLOC="default")["kept"]
