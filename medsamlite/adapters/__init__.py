"""Parameter-efficient adaptation (LoRA, ARENA, BitFit, norm tuning) and data-aware fine-tuning.

Imports are lazy: `medsamlite.adapters.router` stays torch-free for the inference path.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "apply": "api", "merge": "api", "set_adapter": "api", "save_adapter": "api", "load_adapter": "api",
    "read_adapter": "api", "adapter_state_dict": "api", "unload": "api", "trainable_parameters": "api", "summary": "api",
    "records": "api", "active_adapter": "api", "METHODS": "api", "AdapterRecord": "api",
    "AdapterSummary": "api",
    "ProximalStep": "arena", "effective_ranks": "arena", "gates": "arena", "l1_norm": "arena",
    "ArenaSettings": "arena", "LoraSettings": "lora",
    "resolve_targets": "targets", "default_patterns": "targets",
    "DataAwareModel": "daft", "Router": "router",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
