"""LoRA through peft: W = W0 + (alpha / r)·B·A on the target layers, B zero at start (the model is unchanged)."""
from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig

from .registry import Method, register_method
from .tuners import modules_to_save, peft_apply


@dataclass
class LoraSettings:
    """Rank, scale (alpha / r) and dropout of a LoRA adapter."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0


def lora_config(names: list[str], settings: LoraSettings, train_decoder: bool) -> LoraConfig:
    """A peft config wrapping exactly `names`; `train_decoder` gives the adapter its own decoder copy."""
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=names, modules_to_save=modules_to_save(train_decoder))


METHOD = register_method(Method(
    "lora", LoraSettings, peft_apply(lora_config), peft_layout=True,
    description="peft LoRA factors on the target layers (Linear, non-grouped Conv2d)"))
