"""medsamlite: swappable lightweight SAM models for box-prompted medical image segmentation.

`import medsamlite` is light: torch is imported only when a torch-backed object is used.
"""
from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "medsamlite.config",
    "list_models": "medsamlite.registry",
    "list_encoders": "medsamlite.registry",
    "create_model": "medsamlite.registry",
    "register_model": "medsamlite.registry",
    "register_encoder": "medsamlite.registry",
    "get_model_config": "medsamlite.registry",
    "load_checkpoint": "medsamlite.checkpoints",
    "save_model": "medsamlite.checkpoints",
    "load_model": "medsamlite.checkpoints",
    "SamLite": "medsamlite.models.sam",
}

__all__ = sorted(_LAZY) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
