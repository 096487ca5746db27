"""Frozen stays frozen: during training, the modules that do not train run in eval mode.

`model.train()` alone lets every BatchNorm of a frozen encoder update its running statistics (and
`num_batches_tracked`) and keeps its dropout on: the "frozen" base then drifts with every step, and
the per-group adapters of DAFT leak into each other through it. `train_mode` is what a training loop
calls instead of `model.train()`.
"""
from __future__ import annotations

from torch import nn

# methods that train (and save) a whole model; every other adapter method saves parameters only, so running
# statistics it let drift would be lost on reload
_WHOLE_MODEL = ("full", "decoder")


def _records(model: nn.Module) -> dict:
    from ..adapters.api import records

    return records(model)


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The largest submodules with parameters of which none trains; under an adapter, also every layer
    with running statistics (an adapter file holds parameters only, so the base's statistics must stay)."""
    adapted = any(r.method not in _WHOLE_MODEL for r in _records(model).values())
    frozen: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        params = list(module.parameters())
        stats = adapted and getattr(module, "track_running_stats", False)
        if (params and not any(p.requires_grad for p in params)) or stats:
            frozen.append(module)
            inside.update(id(m) for m in module.modules())
    return frozen


def train_mode(model: nn.Module) -> nn.Module:
    """`model.train()`, with the modules of `frozen_modules` (BatchNorm statistics, dropout) left in eval mode."""
    model.train()
    for module in frozen_modules(model):
        module.eval()
    return model
