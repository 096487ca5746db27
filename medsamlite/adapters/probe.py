"""A linear probe on the frozen decoder's mask features: every mask's logits gain w·F (FSEFT's linear probe).

SAM's decoder forms a mask as h·F, with F the upscaled mask features (C = 32 channels per low-res pixel)
and h the mask token's hypernetwork output. A bias-free 1x1 probe w on F adds w·F = (h + w)·F, so the
probe is carried as a shift of the hypernetworks' last Linear layer (w shared by every mask token): it
starts at zero (the model is unchanged), trains C numbers, and merges exactly into those layers' biases.
A probe bias (one constant logit) has no place in the decoder to merge into and is left out.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .registry import PARAMS, Applied, Method, Request, register_method
from .wrappers import Wrapped, replace


@dataclass
class ProbeSettings:
    """The linear probe has no settings."""


class ProbeShift(Wrapped):
    """A hypernetwork's last Linear plus the probe vector w (shared by the mask tokens)."""

    def __init__(self, base: nn.Linear, weight: nn.Parameter) -> None:
        super().__init__(base)
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.weight

    def merged(self) -> nn.Linear:
        layer = copy.deepcopy(self.base)
        with torch.no_grad():
            layer.bias.add_(self.weight)
        return layer


def apply(model: nn.Module, settings: ProbeSettings, request: Request) -> Applied:
    mlps = model.mask_decoder.output_hypernetworks_mlps
    last = [f"mask_decoder.output_hypernetworks_mlps.{i}.layers.{len(m.layers) - 1}" for i, m in enumerate(mlps)]
    first = model.get_submodule(last[0])
    weight = nn.Parameter(torch.zeros(first.out_features, dtype=first.weight.dtype, device=first.weight.device))
    for name in last:
        replace(model, name, ProbeShift(model.get_submodule(name), weight))
    return Applied(last)


METHOD = register_method(Method(
    "probe", ProbeSettings, apply, kind=PARAMS, adds_modules=True, takes_targets=False,
    description="a linear probe w·F on the decoder's mask features F (merges into the hypernetwork biases)"))
