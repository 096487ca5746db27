"""The SAM neck from an encoder's last feature map to the 256-channel image embedding."""
from __future__ import annotations

from torch import nn

from ..models.common import LayerNorm2d


def sam_neck(in_chans: int, out_chans: int = 256) -> nn.Sequential:
    """Conv1x1 (no bias), LayerNorm2d, Conv3x3 (no bias), LayerNorm2d: keys `0`, `1`, `2`, `3`."""
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, kernel_size=1, bias=False),
        LayerNorm2d(out_chans),
        nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(out_chans),
    )
