"""AdaptFormer: a bottleneck MLP beside each encoder MLP, its output scaled and added (arXiv 2205.13535).

y = MLP(x) + s·up(ReLU(down(x))) with `up` zero-initialised, so the model starts unchanged. The encoder
MLPs are the parents of the encoder's registered adapter targets that are feed-forward blocks (timm's
`Mlp` fc1/fc2, EfficientViT's MBConv, RepViT's channel mixer) with equal input and output channels and no
stride; the bottleneck is Linear on tokens and 1x1 convs on channel-first maps. It cannot be merged (the
bottleneck is nonlinear): the adapted model is exported as it is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .registry import PARAMS, Applied, Method, Request, register_method
from .targets import candidates, default_patterns, matches
from .wrappers import Wrapped, replace

# child names of the first and last layer of a feed-forward block
FEEDFORWARD = (("fc1", "fc2"), ("inverted_conv", "point_conv"), ("conv1", "conv2"))


@dataclass
class AdaptFormerSettings:
    """Bottleneck width and output scale s."""

    bottleneck: int = 16
    scale: float = 0.1


class ParallelAdapter(Wrapped):
    """An MLP block and AdaptFormer's scaled bottleneck beside it."""

    def __init__(self, base: nn.Module, bottleneck: int, scale: float) -> None:
        super().__init__(base)
        layers = [m for m in base.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        first, last = layers[0], layers[-1]
        if isinstance(first, nn.Linear):
            self.down, self.up = nn.Linear(first.in_features, bottleneck), nn.Linear(bottleneck, last.out_features)
        else:
            self.down, self.up = nn.Conv2d(first.in_channels, bottleneck, 1), nn.Conv2d(bottleneck, last.out_channels, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.act = nn.ReLU()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.up(self.act(self.down(x)))


def _is_feedforward(module: nn.Module) -> bool:
    children = dict(module.named_children())
    if not any(a in children and b in children for a, b in FEEDFORWARD):
        return False
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    first, last = layers[0], layers[-1]
    width = lambda m, side: getattr(m, f"{side}_features", None) or getattr(m, f"{side}_channels")
    strided = any(isinstance(m, nn.Conv2d) and m.stride != (1, 1) for m in layers)
    return not strided and width(first, "in") == width(last, "out")


def mlp_modules(model: nn.Module, targets: list[str] | None = None) -> list[str]:
    """The encoder MLP blocks: those matching `targets`, else the parents of the registered adapter targets."""
    if targets is not None:
        names = [n for n, m in candidates(model) if matches(targets, n) and _is_feedforward(m)]
    else:
        layers = [n for n, _ in candidates(model) if matches(default_patterns(model), n)]
        names = [n for n, m in candidates(model) if n.startswith("image_encoder.") and _is_feedforward(m)
                 and any(layer.startswith(n + ".") for layer in layers)]
    if not names:
        raise ValueError(f"AdaptFormer found no feed-forward block (fc1/fc2, MBConv, channel mixer with equal "
                         f"in/out channels) in model '{model.config.name}' for targets {targets}")
    return names


def apply(model: nn.Module, settings: AdaptFormerSettings, request: Request) -> Applied:
    names = mlp_modules(model, request.targets)
    for name in names:
        replace(model, name, ParallelAdapter(model.get_submodule(name), settings.bottleneck, settings.scale))
    return Applied(names)


METHOD = register_method(Method(
    "adaptformer", AdaptFormerSettings, apply, kind=PARAMS, merges=False, adds_modules=True,
    description="a scaled bottleneck MLP beside each encoder MLP (zero-initialised up-projection)"))
