"""LiteMedSAM's image encoder: TinyViT-5M at stride 4 plus the SAM neck, built from timm's `TinyVit`.

Reference: bowang-lab/MedSAM (branch LiteMedSAM) `tiny_vit_sam.py`, as built in `CVPR24_LiteMedSAM_infer.py`.
It is timm's `tiny_vit_5m_224` network with two changes, made here after construction: the patch embedding
is two 1x1 stride-1 Conv+BN (timm: 3x3 stride 2), and the last PatchMerging has stride 1 (the reference
hard-codes it for out_dim 320), so a 256 input stays at 64x64 from stage 2 on. Key differences handled by
`remap`: Conv+BN children are `c`/`bn` there (`conv`/`bn` in timm), the patch embedding is `seq.0/2`, and a
stage's PatchMerging ends the reference's `layers.N` but starts timm's `stages.N+1`.
"""
from __future__ import annotations

import re

import torch
from timm.models.tiny_vit import ConvNorm, TinyVit
from torch import nn

from ..registry import register_encoder
from .necks import sam_neck


class TinyVitSam(TinyVit):
    """TinyViT trunk (no classifier) and SAM neck: (B, 3, 256, 256) -> (B, 256, 64, 64)."""

    def __init__(self, embed_dims: tuple[int, ...] = (64, 128, 160, 320), depths: tuple[int, ...] = (2, 2, 6, 2),
                 num_heads: tuple[int, ...] = (2, 4, 5, 10), window_sizes: tuple[int, ...] = (7, 7, 14, 7),
                 drop_path_rate: float = 0.0) -> None:
        super().__init__(num_classes=0, embed_dims=embed_dims, depths=depths, num_heads=num_heads,
                         window_sizes=window_sizes, drop_path_rate=drop_path_rate)
        self.reset_classifier(0, reset_other=True)  # drops the head's norm: the neck replaces it
        self.patch_embed.conv1 = ConvNorm(3, embed_dims[0] // 2)
        self.patch_embed.conv2 = ConvNorm(embed_dims[0] // 2, embed_dims[0])
        self.stages[-1].downsample.conv2.conv.stride = (1, 1)
        for info, reduction in zip(self.feature_info, (1, 2, 4, 4)):
            info["reduction"] = reduction
        self.neck = sam_neck(embed_dims[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.forward_features(x))


_RENAMES = (
    (r"^patch_embed\.seq\.0\.", "patch_embed.conv1."),
    (r"^patch_embed\.seq\.2\.", "patch_embed.conv2."),
    (r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks."),
    (r"\.c\.(weight|bias)$", r".conv.\1"),
)


def remap(sd: dict) -> dict:
    """Reference TinyViT keys (`layers.N.…`, `….c.weight`) to ours; our own keys pass through."""
    out = {}
    for key, value in sd.items():
        merge = re.match(r"^layers\.(\d+)\.downsample\.(.*)$", key)
        if merge:
            key = f"stages.{int(merge.group(1)) + 1}.downsample.{merge.group(2)}"
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


@register_encoder("tinyvit_medsam", remap=remap,
                  adapter_targets=r"stages\.\d+\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc[12])")
def tinyvit_medsam(input_size: int = 256, **kwargs) -> nn.Module:
    """LiteMedSAM's TinyViT-5M encoder (total stride 4, so only a 256 input gives the 64x64 embedding)."""
    if input_size != 256:
        raise ValueError(f"tinyvit_medsam has total stride 4 and needs input_size 256, got {input_size}")
    return TinyVitSam(**kwargs)
