"""EfficientViT-SAM's image encoder (L0, L1): timm's `EfficientVitLarge` backbone, SAM neck, LayerNorm2d.

Reference: mit-han-lab/efficientvit `efficientvit/models/efficientvit/{backbone,sam}.py` (`SamNeck`,
`EfficientViTSamImageEncoder`) as built by `sam_model_zoo.create_sam_model` (all norms eps 1e-6), the
encoder of MedficientSAM and DAFT. timm's backbone is the same network; what differs from timm: LiteMLA's
eps is 1e-15 there (timm 1e-5, not a constructor argument, so it is set after construction), timm's stage
names (`remap`), and timm has no SAM neck, so `SamNeck` below builds the reference's from timm's blocks.
The neck resizes every input to a fixed 64x64, so any input size gives a (B, 256, 64, 64) embedding.
"""
from __future__ import annotations

import re
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import GELUTanh
from timm.models.efficientvit_mit import ConvNormAct, EfficientVitLarge, FusedMBConv, LiteMLA, ResidualBlock
from torch import nn

from ..models.common import LayerNorm2d
from ..registry import register_encoder

NORM_EPS = 1e-6
_FEATURE_STAGES = (3, 2, 1)  # timm stage indices of the reference's stage4, stage3, stage2


class SamNeck(nn.Module):
    """Each input: Conv1x1+BN, bicubic resize to `size`; sum; residual FusedMBConvs; Conv1x1 with bias."""

    def __init__(self, in_chs: tuple[int, ...] = (512, 256, 128), width: int = 256, depth: int = 4,
                 out_chs: int = 256, size: int = 64) -> None:
        super().__init__()
        norm = partial(nn.BatchNorm2d, eps=NORM_EPS)
        self.size = (size, size)
        self.inputs = nn.ModuleList(ConvNormAct(c, width, 1, norm_layer=norm, act_layer=None) for c in in_chs)
        self.blocks = nn.Sequential(*(
            ResidualBlock(FusedMBConv(width, width, expand_ratio=1, norm_layer=norm, act_layer=(GELUTanh, None)),
                          nn.Identity())
            for _ in range(depth)))
        self.proj = nn.Conv2d(width, out_chs, 1)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.shape[-2:] == self.size else F.interpolate(x, self.size, mode="bicubic", align_corners=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        maps = [self._resize(op(x)) for op, x in zip(self.inputs, features)]
        x = maps[-1]
        for m in reversed(maps[:-1]):  # the reference sums as a + (b + c)
            x = m + x
        return self.proj(self.blocks(x))


class EfficientVitSam(nn.Module):
    """Backbone stages 2-4 -> neck -> LayerNorm2d: (B, 3, S, S) -> (B, 256, 64, 64) for any S divisible by 32."""

    def __init__(self, depths: tuple[int, ...], neck_depth: int,
                 widths: tuple[int, ...] = (32, 64, 128, 256, 512)) -> None:
        super().__init__()
        self.backbone = EfficientVitLarge(widths=widths, depths=depths, head_dim=32, norm_eps=NORM_EPS,
                                          head_widths=(1, 1), num_classes=0)  # tiny head, pruned next
        self.backbone.prune_intermediate_layers(list(_FEATURE_STAGES), prune_head=True)
        for m in self.backbone.modules():
            if isinstance(m, LiteMLA):
                m.eps = 1e-15
        self.neck = SamNeck(tuple(widths[i + 1] for i in _FEATURE_STAGES), depth=neck_depth)
        self.norm = LayerNorm2d(256, eps=NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_intermediates(x, indices=list(_FEATURE_STAGES), intermediates_only=True)
        return self.norm(self.neck(features[::-1]))  # intermediates come in stage order: 2, 3, 4


_RENAMES = (
    (r"^backbone\.stages\.0\.op_list\.0\.", "backbone.stem.in_conv."),
    (r"^neck\.input_ops\.(\d+)\.op_list\.0\.", r"neck.inputs.\1."),
    (r"^neck\.middle\.op_list\.(\d+)\.", r"neck.blocks.\1."),
    (r"^neck\.output_ops\.0\.op_list\.0\.conv\.", "neck.proj."),
)


def remap(sd: dict) -> dict:
    """Reference keys (`backbone.stages.S.op_list.K.…`, `neck.input_ops.…`) to ours; ours pass through."""
    out = {}
    for key, value in sd.items():
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        stage = re.match(r"^backbone\.stages\.(\d+)\.op_list\.(\d+)\.(.*)$", key)
        if stage:
            s, k, rest = int(stage.group(1)), int(stage.group(2)), stage.group(3)
            key = f"backbone.stem.res{k - 1}.{rest}" if s == 0 else f"backbone.stages.{s - 1}.blocks.{k}.{rest}"
        out[key] = value
    return out


# LiteMLA qkv/proj and the MBConv pointwise convs (depthwise convs cannot take LoRA)
_ADAPTER_TARGETS = r"backbone\.stages\.\d+\.blocks\.\d+\..*\.(qkv|proj|inverted_conv|point_conv)\.conv"


@register_encoder("efficientvit_l0", remap=remap,
                  adapter_targets=_ADAPTER_TARGETS)
def efficientvit_l0(input_size: int = 512, **kwargs) -> nn.Module:
    """EfficientViT-SAM L0 encoder (backbone depths 1/1/1/4/4, 4 neck blocks)."""
    return EfficientVitSam(depths=(1, 1, 1, 4, 4), neck_depth=4, **kwargs)


@register_encoder("efficientvit_l1", remap=remap,
                  adapter_targets=_ADAPTER_TARGETS)
def efficientvit_l1(input_size: int = 512, **kwargs) -> nn.Module:
    """EfficientViT-SAM L1 encoder (backbone depths 1/1/1/6/6, 8 neck blocks)."""
    return EfficientVitSam(depths=(1, 1, 1, 6, 6), neck_depth=8, **kwargs)
