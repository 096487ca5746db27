"""Modules that PARAMS methods put in place of a part of the model, keeping the original as `base`."""
from __future__ import annotations

from torch import nn


class Wrapped(nn.Module):
    """`base` (the original module, frozen) with a method's added module; `merged()` folds it, or is None."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def merged(self) -> nn.Module | None:
        """The base with the addition folded into its weights (same type as the base), or None if it cannot."""
        return None


def replace(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` in place of the submodule `name`."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def added_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters the wrappers added (not their bases'), each shared tensor once."""
    own = dict(model.named_parameters())
    return [f"{name}.{p}" for name, module in model.named_modules() if isinstance(module, Wrapped)
            for p, _ in module.named_parameters() if not p.startswith("base.") and f"{name}.{p}" in own]
