"""medsamlite: swappable lightweight SAM models for box-prompted medical image segmentation.

`import medsamlite` is light: the registry's entries are torch-free, and torch is imported only when a
torch-backed object is used.
"""
from __future__ import annotations

from . import zoo  # noqa: F401  (registers the built-in models; torch-free)
from ._lazy import lazy_exports
from .constants import __version__

_LAZY = {
    "ModelConfig": "medsamlite.config",
    "list_models": "medsamlite.registry",
    "list_encoders": "medsamlite.factory",  # the factory imports the encoder families first
    "get_encoder_spec": "medsamlite.factory",
    "register_model": "medsamlite.registry",
    "register_encoder": "medsamlite.registry",
    "get_model_config": "medsamlite.registry",
    "get_model_spec": "medsamlite.registry",
    "create_model": "medsamlite.factory",
    "load_model": "medsamlite.factory",
    "load_checkpoint": "medsamlite.checkpoints",
    "save_model": "medsamlite.checkpoints",
    "open": "medsamlite.engines",
    "Predictor": "medsamlite.runtime.predictor",
    "SamLite": "medsamlite.models.sam",
}

__all__ = sorted(_LAZY) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
