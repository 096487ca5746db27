"""Parameter-efficient adaptation (one module per method, one registry) and data-aware fine-tuning.

Imports are lazy: `medsamlite.runtime.router` stays torch-free for the inference path.
"""
from __future__ import annotations

from ..extras import require

require("train", "medsamlite.adapters")

from .._lazy import lazy_exports

_LAZY = {
    "apply": "api", "merge": "api", "set_adapter": "api", "save_adapter": "api", "load_adapter": "api",
    "save_pretrained": "api", "read_adapter": "api", "adapter_state_dict": "api", "unload": "api",
    "trainable_parameters": "api", "summary": "api", "records": "api", "active_adapter": "api",
    "after_step": "api", "METHODS": "api", "AdapterRecord": "api", "AdapterSummary": "api",
    "register_method": "registry", "Method": "registry", "get_method": "api", "list_methods": "api",
    "ProximalStep": "arena", "effective_ranks": "arena", "gates": "arena", "l1_norm": "arena",
    "ArenaSettings": "arena", "LoraSettings": "lora", "AdaLoraSettings": "adalora", "RankAllocation": "adalora",
    "resolve_targets": "targets", "default_patterns": "targets",
    "DataAwareModel": "daft",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
