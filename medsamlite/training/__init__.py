"""Training: losses, encoder distillation and fine-tuning (torch is imported only when a name is used).

`medsamlite.training.distill` and `medsamlite.training.finetune` are the modules; their entry points
are `from medsamlite.training.distill import distill` and `from medsamlite.training.finetune import finetune`
(a package attribute cannot be both a submodule and a function of the same name).
"""
from __future__ import annotations

from ..extras import require

require("train", "medsamlite.training")

from .._lazy import lazy_exports

_LAZY = {
    "get_loss": "losses", "LOSSES": "losses", "LiteMedSAMLoss": "losses", "DiceFocal": "losses",
    "PartialLabelLoss": "losses", "mask_iou": "losses",
    "DistillConfig": "config", "DistillResult": "distill", "copy_heads": "distill",
    "FinetuneConfig": "config", "FinetuneResult": "finetune", "evaluate": "finetune", "freeze": "finetune",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
