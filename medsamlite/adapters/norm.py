"""Norm tuning: only the affine weight and bias of the normalisation layers train (Affine-LN / BN in FSEFT)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .registry import PARAMS, Applied, Method, Request, register_method
from .targets import ENCODER

NORMS = (nn.LayerNorm, _BatchNorm, nn.GroupNorm)


@dataclass
class NormSettings:
    """Norm tuning has no settings."""


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, BatchNorm or GroupNorm, including subclasses such as LayerNorm2d."""
    return isinstance(module, NORMS) or type(module).__name__.endswith(("LayerNorm2d", "LayerNorm"))


def norm_parameters(model: nn.Module, include_decoder: bool = False) -> list[str]:
    """Names of the affine parameters of every norm layer in the encoder (and the decoder)."""
    scopes = (ENCODER, "mask_decoder.") if include_decoder else (ENCODER,)
    names = [f"{module_name}.{p}" for module_name, module in model.named_modules()
             if module_name.startswith(scopes) and is_norm(module)
             for p, value in module.named_parameters(recurse=False) if value is not None]
    if not names:
        raise ValueError(f"model '{model.config.name}' has no affine norm layer to tune")
    return names


def apply(model: nn.Module, settings: NormSettings, request: Request) -> Applied:
    names = norm_parameters(model, request.include_decoder)
    return Applied(names, names)


METHOD = register_method(Method("norm", NormSettings, apply, kind=PARAMS, takes_targets=False,
                                description="affine weight and bias of every norm layer of the encoder"))
