"""CPU capabilities and the precision policy shared by every runtime (torch-free).

One word per choice, the same for OpenVINO, ONNX Runtime and torch:
"f32" exact on every CPU (the default), "bf16" where the CPU has native bf16 (AVX512-BF16 or AMX),
"int8" NNCF post-training quantisation of the image encoder, "auto" whatever the runtime picks.
OpenVINO's own default on an AMX CPU is bf16, so "f32" must be set explicitly to mean f32.
"""
from __future__ import annotations

import platform
import warnings
from functools import lru_cache
from pathlib import Path

from ..constants import PRECISIONS

# CPU flags that matter for the precision choice, in the order they are reported.
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class PrecisionWarning(UserWarning):
    """A requested precision the CPU or runtime cannot run; another one is used instead."""


@lru_cache(maxsize=None)
def _cpuinfo() -> dict[str, str]:
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return {}
    info: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_name() -> str:
    """The CPU's model name (`lscpu`'s "Model name")."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """Instruction-set flags of the CPU (empty where /proc/cpuinfo is absent)."""
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_summary() -> str:
    """CPU name with the precision-relevant flags, for benchmark headers and warnings."""
    flags = [f for f in REPORTED_FLAGS if f in cpu_flags()]
    return f"{cpu_name()} [{' '.join(flags) or 'no AVX2/AVX-512 flags'}]"


def cpu_supports_bf16() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX-BF16): what makes bf16 faster than f32."""
    return any(f in cpu_flags() for f in BF16_FLAGS)


def check_precision(precision: str) -> str:
    """`precision` if it is one of PRECISIONS, else a ValueError naming them."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


def fallback_warning(requested: str, used: str, reason: str) -> None:
    """Warn that `requested` runs as `used`, naming the CPU."""
    warnings.warn(f"precision {requested!r} is not available ({reason}) on {cpu_summary()}; running {used!r}",
                  PrecisionWarning, stacklevel=3)
