"""ARENA: adaptive-rank LoRA, W = W0 + B·diag(v)·A with an ℓ1 penalty on the gate v (arXiv 2507.15793).

The penalty is applied by a proximal step after each optimiser step, soft-thresholding
v <- sign(v)·max(|v| - lr·λ, 0) (as SoRA does), so unused rank components become exactly zero and the
effective rank of each layer is the number of non-zero gate entries. The gate is a peft LoRA *variant*
carried by custom LoRA layers, so injection, named adapters, `set_adapter`, adapter state dicts and
merging all stay peft's; merging folds B·diag(v)·A into W0, where zero components contribute nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora import layer as lora_layer
from peft.tuners.lora.variants import LoraVariant
from torch import nn

from .lora import LoraSettings, lora_config
from .registry import Method, register_method
from .tuners import peft_apply

GATE = "lora_gate"


@dataclass
class ArenaSettings(LoraSettings):
    """LoRA settings plus the ℓ1 weight λ on the gate; `r` is the initial (maximum) rank."""

    lam: float = 1e-3


def _gate(module: lora_layer.LoraLayer, adapter: str, ndim: int) -> torch.Tensor:
    """The gate shaped to scale the rank axis of an activation with `ndim` dims (last for Linear, 1 for conv)."""
    v = getattr(module, GATE)[adapter]
    return v if isinstance(module.get_base_layer(), nn.Linear) else v.view(-1, *([1] * (ndim - 2)))


def delta_weight(module: lora_layer.LoraLayer, adapter: str) -> torch.Tensor:
    """scaling · B·diag(v)·A in the base weight's shape (a Linear's matrix or a conv kernel)."""
    a = module.lora_A[adapter].weight
    b = module.lora_B[adapter].weight.flatten(1)  # (out, r): B is a Linear or a 1x1 conv
    v = getattr(module, GATE)[adapter]
    return torch.einsum("or,r,r...->o...", b, v, a) * module.scaling[adapter]


class ArenaVariant(LoraVariant):
    """The gated forward and merge of one ARENA adapter on a peft LoRA layer."""

    @staticmethod
    def init(module: lora_layer.LoraLayer, adapter_name: str, **kwargs: Any) -> None:
        if not hasattr(module, GATE):
            module.lora_gate = nn.ParameterDict()
            module.adapter_layer_names = module.adapter_layer_names + (GATE,)
        weight = module.lora_A[adapter_name].weight
        module.lora_gate[adapter_name] = nn.Parameter(torch.ones(module.r[adapter_name], dtype=weight.dtype,
                                                                 device=weight.device))

    @staticmethod
    def merge_safe(module: lora_layer.LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight + delta_weight(module, active_adapter).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module: lora_layer.LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data += delta_weight(module, active_adapter).to(orig_weight.dtype)

    @staticmethod
    def unmerge(module: lora_layer.LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight - delta_weight(module, active_adapter).to(orig_weight.dtype)

    @staticmethod
    def forward(module: lora_layer.LoraLayer, active_adapter: str, x: torch.Tensor, result: torch.Tensor,
                **kwargs: Any) -> torch.Tensor:
        hidden = module.lora_A[active_adapter](module.lora_dropout[active_adapter](x))
        hidden = hidden * _gate(module, active_adapter, hidden.ndim)
        return result + module.lora_B[active_adapter](hidden) * module.scaling[active_adapter]


class ArenaLinear(lora_layer.Linear):
    """peft's LoRA Linear whose adapters are ARENA-gated."""

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs: Any) -> LoraVariant:
        return ArenaVariant()


class ArenaConv2d(lora_layer.Conv2d):
    """peft's LoRA Conv2d whose adapters are ARENA-gated."""

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs: Any) -> LoraVariant:
        return ArenaVariant()


def arena_config(names: list[str], settings: ArenaSettings, train_decoder: bool) -> LoraConfig:
    """A peft LoRA config whose layers are the ARENA ones."""
    config = lora_config(names, settings, train_decoder)
    config._register_custom_module({nn.Linear: ArenaLinear, nn.Conv2d: ArenaConv2d})
    return config


def gates(model: nn.Module, adapter: str | None = None) -> dict[str, nn.Parameter]:
    """Gate vector of each ARENA layer (of `adapter`, else of each layer's active adapter), by layer name."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (ArenaLinear, ArenaConv2d)):
            key = adapter or module.active_adapters[0]
            if key in module.lora_gate:
                out[name] = module.lora_gate[key]
    return out


def effective_ranks(model: nn.Module, adapter: str | None = None) -> dict[str, int]:
    """Number of non-zero gate components of each ARENA layer."""
    return {name: int(torch.count_nonzero(v).item()) for name, v in gates(model, adapter).items()}


def l1_norm(model: nn.Module, adapter: str | None = None) -> torch.Tensor:
    """Σ|v| over the gates (the penalty the proximal step minimises, for logging)."""
    return sum((v.abs().sum() for v in gates(model, adapter).values()), torch.tensor(0.0))


@torch.no_grad()
def soft_threshold_(v: torch.Tensor, threshold: float) -> torch.Tensor:
    """In place: v <- sign(v)·max(|v| - threshold, 0)."""
    return v.copy_(torch.sign(v) * torch.clamp(v.abs() - threshold, min=0.0))


class ProximalStep:
    """`after_step(model, optimizer)` hook: soft-threshold every trainable gate by its group's lr·λ."""

    def __init__(self, lam: float) -> None:
        if lam < 0:
            raise ValueError(f"ARENA λ must be >= 0, got {lam}")
        self.lam = lam

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        lr = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        for v in gates(model).values():
            if v.requires_grad and id(v) in lr:
                soft_threshold_(v, lr[id(v)] * self.lam)



METHOD = register_method(Method(
    "arena", ArenaSettings, peft_apply(arena_config), hook=lambda settings: ProximalStep(settings.lam),
    description="LoRA with a gate v (W = W0 + B·diag(v)·A) and an l1 penalty on v by a proximal step"))
