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

import numpy as np
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


class PixelShuffleUp(nn.Sequential):
    """2x upsampling by a 1x1 conv to 4C channels and a pixel shuffle, initialised to nearest-neighbour copies."""

    def __init__(self, channels: int) -> None:
        super().__init__(nn.Conv2d(channels, 4 * channels, kernel_size=1), nn.PixelShuffle(2))
        with torch.no_grad():  # output channel 4c + k is sub-pixel k of channel c: each copies channel c
            self[0].weight.zero_()
            self[0].bias.zero_()
            self[0].weight.view(channels, 4, channels).copy_(torch.eye(channels)[:, None, :])


class TinyVitSamS8(TinyVitSam):
    """LiteMedSAM's TinyViT run on the image at half resolution (trunk stride 8), neck at 32x32, learned 2x upsampling.

    Every weight but the upsampler's has LiteMedSAM's shape, so the student starts from the teacher
    (`init_from_teacher`). Stage 2 keeps 2 of the teacher's 6 blocks: 13.7 against 74.9 GFLOP, 4.8x faster at
    OpenVINO f32 (Sapphire Rapids, 2 cores, 2026-12-07).
    """

    def __init__(self, depths: tuple[int, ...] = (2, 2, 2, 2), **kwargs) -> None:
        super().__init__(depths=depths, **kwargs)
        self.up = PixelShuffleUp(256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = torch.nn.functional.avg_pool2d(x, 2)  # anti-aliased half resolution
        return self.up(self.neck(self.forward_features(half)))


def init_from_teacher(student: TinyVitSamS8, teacher: TinyVitSam) -> None:
    """Copy the teacher's trunk and neck into `student`; a stage with fewer blocks takes evenly spaced ones,
    first and last included (on synthetic images that starts nearer the teacher than the first k blocks)."""
    source = teacher.state_dict()
    taken = {}
    for key in student.state_dict():
        parts = key.split(".")
        if parts[0] == "up":
            continue
        if parts[0] == "stages" and parts[2] == "blocks":
            stage = int(parts[1])
            chosen = np.linspace(0, len(teacher.stages[stage].blocks) - 1, len(student.stages[stage].blocks))
            parts[3] = str(int(round(chosen[int(parts[3])])))
        taken[key] = source[".".join(parts)]
    student.load_state_dict(taken, strict=False)


@register_encoder("tinyvit_s8_medsam", remap=remap,
                  adapter_targets=r"stages\.\d+\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc[12])")
def tinyvit_s8_medsam(input_size: int = 256, **kwargs) -> nn.Module:
    """LiteMedSAM's TinyViT at trunk stride 8 with a learned 2x upsampler: the student medsamlite distils."""
    if input_size != 256:
        raise ValueError(f"tinyvit_s8_medsam needs input_size 256, got {input_size}")
    return TinyVitSamS8(**kwargs)
