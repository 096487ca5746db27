"""Data: task-format and prepared data sets, `prepare`, augmentation, modality-aware sampling, synthetic cases.

Names load lazily, so `medsamlite.data.synthetic` and `medsamlite.runtime.modality` stay torch-free.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_LAZY = {
    "parse_modality": "medsamlite.runtime.modality",
    "ModalityBalancedSampler": "medsamlite.data.samplers",
    "NpzSliceDataset": "medsamlite.data.datasets",
    "NpzImageDataset": "medsamlite.data.datasets",
    "split_cases": "medsamlite.data.datasets",
    "find_cases": "medsamlite.constants",
    "PreparedDataset": "medsamlite.data.prepared",
    "Augmentation": "medsamlite.data.augment",
    "ItemSpec": "medsamlite.data.items",
    "build_item": "medsamlite.data.items",
    "SyntheticCase": "medsamlite.data.synthetic",
    "make_case": "medsamlite.data.synthetic",
    "write_dataset": "medsamlite.data.synthetic",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
