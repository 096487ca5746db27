"""Training: losses, encoder distillation and fine-tuning (torch is imported only when a name is used).

`medsamlite.training.distill` and `medsamlite.training.finetune` are the modules; their entry points
are `from medsamlite.training.distill import distill` and `from medsamlite.training.finetune import finetune`
(a package attribute cannot be both a submodule and a function of the same name).
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "get_loss": "losses", "LOSSES": "losses", "LiteMedSAMLoss": "losses", "DiceFocal": "losses",
    "PartialLabelLoss": "losses", "mask_iou": "losses",
    "DistillConfig": "config", "DistillResult": "distill", "copy_heads": "distill",
    "FinetuneConfig": "config", "FinetuneResult": "finetune", "evaluate": "finetune", "freeze": "finetune",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
