"""BitFit: only biases train (peft has no BitFit; it is `requires_grad` on the chosen biases)."""
from __future__ import annotations

import re
from typing import Iterable

from torch import nn

from .targets import ENCODER


def bias_parameters(model: nn.Module, patterns: Iterable[str] | None = None, include_decoder: bool = False
                    ) -> list[str]:
    """Names of the biases to train: every encoder bias, or those of the modules matching `patterns`."""
    scopes = (ENCODER, "mask_decoder.") if include_decoder else (ENCODER,)
    names = []
    for module_name, module in model.named_modules():
        bias = getattr(module, "bias", None)
        if not isinstance(bias, nn.Parameter):
            continue
        if patterns is None:
            chosen = module_name.startswith(scopes)
        else:
            relative = module_name[len(ENCODER):] if module_name.startswith(ENCODER) else module_name
            chosen = any(re.fullmatch(p, module_name) or re.fullmatch(p, relative) for p in patterns)
        if chosen:
            names.append(f"{module_name}.bias")
    if not names:
        raise ValueError(f"BitFit found no bias to train in model '{model.config.name}' for targets {patterns}")
    return names
