"""Frozen stays frozen: during training, the modules that do not train run in eval mode, and a frozen
image encoder computes each distinct image once (`CachedEncoder`).

`model.train()` alone lets every BatchNorm of a frozen encoder update its running statistics (and
`num_batches_tracked`) and keeps its dropout on: the "frozen" base then drifts with every step, and
the per-group adapters of DAFT leak into each other through it. `train_mode` is what a training loop
calls instead of `model.train()`.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
from torch import nn

# methods that train (and save) a whole model; every other adapter method saves parameters only, so running
# statistics it let drift would be lost on reload
_WHOLE_MODEL = ("full", "decoder")


def _records(model: nn.Module) -> dict:
    from ..adapters.api import records

    return records(model)


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The largest submodules with parameters of which none trains; under an adapter, also every layer
    with running statistics (an adapter file holds parameters only, so the base's statistics must stay)."""
    adapted = any(r.method not in _WHOLE_MODEL for r in _records(model).values())
    frozen: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        params = list(module.parameters())
        stats = adapted and getattr(module, "track_running_stats", False)
        if (params and not any(p.requires_grad for p in params)) or stats:
            frozen.append(module)
            inside.update(id(m) for m in module.modules())
    return frozen


def train_mode(model: nn.Module) -> nn.Module:
    """`model.train()`, with the modules of `frozen_modules` (BatchNorm statistics, dropout) left in eval mode."""
    model.train()
    for module in frozen_modules(model):
        module.eval()
    return model


class CachedEncoder(nn.Module):
    """A frozen encoder that computes each distinct image once (the `size` most recent kept), always in eval mode.

    Keyed by the image's bytes, so a flipped or re-drawn image is a new entry, never a stale one. Each image is
    encoded alone: kernels round differently with the batch size, and a run resumed with an empty cache must
    reproduce the uninterrupted one bit for bit.
    """

    def __init__(self, encoder: nn.Module, size: int = 64) -> None:
        super().__init__()
        self.encoder, self.size = encoder, size
        self.cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    def train(self, mode: bool = True) -> "CachedEncoder":
        super().train(mode)
        self.encoder.eval()  # frozen: BatchNorm statistics stay as trained
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        keys = [hashlib.blake2b(x.cpu().numpy().tobytes(), digest_size=16).digest() for x in images]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        for i in missing:  # one at a time: an embedding then never depends on its batch, so a resumed run is exact
            self.cache[keys[i]] = self.encoder(images[i:i + 1])[0]
        for k in keys:
            self.cache.move_to_end(k)
        out = torch.stack([self.cache[k] for k in keys])
        while len(self.cache) > self.size:
            self.cache.popitem(last=False)
        return out


def cached_if_frozen(model: nn.Module, size: int) -> CachedEncoder | None:
    """`model.image_encoder` behind a `size`-image cache when none of its parameters trains (else, or size 0, None)."""
    encoder = model.image_encoder
    if size <= 0 or any(p.requires_grad for p in encoder.parameters()):
        return None
    return CachedEncoder(encoder, size)
