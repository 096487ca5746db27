"""A spatial "black-box" adapter: a small conv block on the image embedding, residual, zero at start.

e' = e + conv(GELU(conv(e))) between the frozen encoder and the decoder (FSEFT's spatial adapter). No
gradient flows through the encoder, so its embeddings can be computed once and cached (the few-shot
protocol does). It cannot be merged: the adapted model is exported as it is, the block inside `encode`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .registry import PARAMS, Applied, Method, Request, register_method
from .wrappers import Wrapped, replace


@dataclass
class SpatialSettings:
    """Hidden channels and kernel size of the two convolutions."""

    hidden: int = 32
    kernel: int = 3


class SpatialAdapter(Wrapped):
    """The image encoder followed by the residual conv block."""

    def __init__(self, base: nn.Module, channels: int, hidden: int, kernel: int) -> None:
        super().__init__(base)
        pad = kernel // 2
        self.block = nn.Sequential(nn.Conv2d(channels, hidden, kernel, padding=pad), nn.GELU(),
                                   nn.Conv2d(hidden, channels, kernel, padding=pad))
        nn.init.zeros_(self.block[-1].weight)
        nn.init.zeros_(self.block[-1].bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embedding = self.base(images)
        return embedding + self.block(embedding)


def apply(model: nn.Module, settings: SpatialSettings, request: Request) -> Applied:
    if settings.kernel % 2 != 1:
        raise ValueError(f"spatial adapter kernel {settings.kernel}; expected an odd size (the map keeps its size)")
    replace(model, "image_encoder", SpatialAdapter(model.image_encoder, model.config.embed_dim, settings.hidden,
                                                   settings.kernel))
    return Applied(["image_encoder"])


METHOD = register_method(Method(
    "spatial", SpatialSettings, apply, kind=PARAMS, merges=False, adds_modules=True, takes_targets=False,
    description="a residual conv block on the image embedding, encoder frozen (black-box)"))
