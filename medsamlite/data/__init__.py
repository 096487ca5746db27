"""Data: task-format data sets, modality-aware sampling and the synthetic multi-modality cases.

Names load lazily, so `medsamlite.data.synthetic` and `medsamlite.data.modality` stay torch-free.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "parse_modality": "medsamlite.data.modality",
    "ModalityBalancedSampler": "medsamlite.data.samplers",
    "NpzSliceDataset": "medsamlite.data.datasets",
    "NpzImageDataset": "medsamlite.data.datasets",
    "split_cases": "medsamlite.data.datasets",
    "SyntheticCase": "medsamlite.data.synthetic",
    "make_case": "medsamlite.data.synthetic",
    "write_dataset": "medsamlite.data.synthetic",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medsamlite.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
