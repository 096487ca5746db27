"""Training: one loop (`train`) on Accelerate, tasks for fine-tuning and distillation, losses (torch loads lazily).

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
    "TrainConfig": "config", "DistillConfig": "config", "FinetuneConfig": "config",
    "TrainResult": "loop", "Task": "loop", "train": "loop",
    "DistillTask": "distill", "TeacherCache": "distill", "copy_heads": "distill",
    "FinetuneTask": "finetune", "evaluate": "finetune", "freeze": "finetune",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
