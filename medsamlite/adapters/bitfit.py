"""BitFit: only biases train (peft has no BitFit; it is `requires_grad` on the chosen biases)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from torch import nn

from .registry import PARAMS, Applied, Method, Request, register_method
from .targets import ENCODER, matches


@dataclass
class BitFitSettings:
    """BitFit has no settings (`targets` narrows the modules whose biases train)."""


def bias_parameters(model: nn.Module, patterns: Iterable[str] | None = None, include_decoder: bool = False
                    ) -> list[str]:
    """Names of the biases to train: every encoder bias, or those of the modules matching `patterns`."""
    scopes = (ENCODER, "mask_decoder.") if include_decoder else (ENCODER,)
    names = [f"{module_name}.bias" for module_name, module in model.named_modules()
             if isinstance(getattr(module, "bias", None), nn.Parameter)
             and (module_name.startswith(scopes) if patterns is None else matches(patterns, module_name))]
    if not names:
        raise ValueError(f"BitFit found no bias to train in model '{model.config.name}' for targets {patterns}")
    return names


def apply(model: nn.Module, settings: BitFitSettings, request: Request) -> Applied:
    names = bias_parameters(model, request.targets, request.include_decoder)
    return Applied(names, names)


METHOD = register_method(Method("bitfit", BitFitSettings, apply, kind=PARAMS,
                                description="biases of the encoder (or of the modules matching targets)"))
