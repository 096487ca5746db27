"""LoRA through peft on a plain `SamLite`: named adapters injected in place, switched with `set_adapter`."""
from __future__ import annotations

import re

from dataclasses import asdict, dataclass

from peft import LoraConfig, inject_adapter_in_model
from peft.functional import set_adapter as peft_set_adapter
from torch import nn

DECODER = "mask_decoder"


@dataclass
class LoraSettings:
    """Rank, scale (alpha / r) and dropout of a LoRA adapter."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def lora_config(names: list[str], settings: LoraSettings, train_decoder: bool) -> LoraConfig:
    """A peft config wrapping exactly `names`; `train_decoder` gives the adapter its own decoder copy."""
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=names, modules_to_save=[DECODER] if train_decoder else None)


def inject(model: nn.Module, config: LoraConfig, adapter_name: str) -> nn.Module:
    """Add adapter `adapter_name` to `model` in place and make it the active, only trainable one."""
    if adapter_name in getattr(model, "peft_config", {}):
        raise ValueError(f"model already has an adapter named {adapter_name!r}; pick another adapter_name")
    inject_adapter_in_model(config, model, adapter_name=adapter_name)
    activate(model, adapter_name)
    return model


def activate(model: nn.Module, adapter_name: str) -> None:
    """Route through `adapter_name` (LoRA layers and decoder copies); only its parameters train."""
    if adapter_name not in getattr(model, "peft_config", {}):
        raise KeyError(f"no adapter {adapter_name!r}; the model has {sorted(getattr(model, 'peft_config', {}))}")
    peft_set_adapter(model, adapter_name)
    own = adapter_parameter_pattern(adapter_name)
    for name, p in model.named_parameters():  # peft leaves other adapters' decoder copies trainable
        p.requires_grad_(own.search(name) is not None)


def adapter_parameter_pattern(adapter_name: str) -> re.Pattern:
    """Matches the parameter names that belong to adapter `adapter_name` (factors, gates, decoder copy)."""
    return re.compile(rf"\.(lora_[A-Za-z_]+|modules_to_save)\.{re.escape(adapter_name)}(\.|$)")
