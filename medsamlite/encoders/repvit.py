"""The MedSAM-on-Laptop student encoder: RepViT-M0.6 at total stride 4 plus the SAM neck, from timm's blocks.

Reference: YSongxiao/MedSAMonLaptop_RepViT `repvit.py` (Yang et al., CVPR 2024 MedSAM on Laptop), the
`# repvit-0-6` cfgs, as built by `create_model('repvit')` in `CVPR24_LiteMedSAM_infer_repvit.py`.
Every block there has stride 1, so a 256 input stays at 64x64 after the stride-4 stem. What differs from
timm's `RepVit`: its downsampling stages (`RepVitDownsample`, stride 2) do not exist here; the three
channel-changing blocks are instead `RepVitTransition` below (RepVGG-DW, then a non-residual
Conv-BN(c, 2c) - GELU - Conv-BN(2c, c_out)). The other blocks are timm's `RepViTBlock` as is.
Key differences handled by `remap`: the reference numbers everything `features.N` (stem `features.0.0/2`),
its SE is `token_mixer.1` (timm: `se`) and its MLP is `channel_mixer.m.0/m.2` (timm: `conv1`/`conv2`).
"""
from __future__ import annotations

import re

import torch
from timm.models.repvit import ConvNorm, RepVggDw, RepViTBlock, RepVitStem
from torch import nn

from ..registry import register_encoder
from .necks import sam_neck

# (out_channels, squeeze-excite) of the reference's features.1..17: the M0.6 cfgs with every stride 1
M0_6_BLOCKS = (
    (40, True), (40, False),
    (80, False), (80, True), (80, False),
    (160, False), (160, True), (160, False), (160, True), (160, False),
    (160, True), (160, False), (160, True), (160, False), (160, False),
    (320, False), (320, True),
)


class RepVitTransition(nn.Module):
    """A stride-1 channel-changing block: RepVGG-DW, then Conv-BN(c, 2c), GELU, Conv-BN(2c, out), no residual."""

    def __init__(self, in_dim: int, out_dim: int, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.token_mixer = RepVggDw(in_dim, 3)
        self.channel_mixer = nn.Sequential()
        self.channel_mixer.add_module("conv1", ConvNorm(in_dim, 2 * in_dim))
        self.channel_mixer.add_module("act", act_layer())
        # zero-initialised BN scale as in the reference (it copies the residual block's pw-linear layer)
        self.channel_mixer.add_module("conv2", ConvNorm(2 * in_dim, out_dim, bn_weight_init=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mixer(self.token_mixer(x))


class RepVitSam(nn.Module):
    """Stem (stride 4), stride-1 RepViT blocks, SAM neck: (B, 3, 256, 256) -> (B, 256, 64, 64)."""

    def __init__(self, blocks: tuple[tuple[int, bool], ...] = M0_6_BLOCKS, act_layer: type[nn.Module] = nn.GELU
                 ) -> None:
        super().__init__()
        dim = blocks[0][0]
        self.stem = RepVitStem(3, dim, act_layer)
        layers = []
        for out_dim, use_se in blocks:
            if out_dim == dim:
                layers.append(RepViTBlock(dim, mlp_ratio=2, kernel_size=3, use_se=use_se, act_layer=act_layer))
            elif use_se:
                raise ValueError(f"a channel-changing block ({dim} -> {out_dim}) has no squeeze-excite")
            else:
                layers.append(RepVitTransition(dim, out_dim, act_layer))
            dim = out_dim
        self.blocks = nn.Sequential(*layers)
        self.neck = sam_neck(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.blocks(self.stem(x)))

    @torch.no_grad()
    def fuse(self) -> "RepVitSam":
        """Re-parameterise for inference in place, as timm's `RepVit.fuse`: each ConvNorm and RepVggDw -> one conv."""

        def fuse_children(net: nn.Module) -> None:
            for name, child in net.named_children():
                if hasattr(child, "fuse"):
                    setattr(net, name, child.fuse())
                else:
                    fuse_children(child)

        fuse_children(self)
        return self


_RENAMES = (
    (r"^features\.0\.0\.", "stem.conv1."),
    (r"^features\.0\.2\.", "stem.conv2."),
    (r"\.token_mixer\.0\.", ".token_mixer."),
    (r"\.token_mixer\.1\.", ".se."),
    (r"\.channel_mixer\.(m\.)?0\.", ".channel_mixer.conv1."),
    (r"\.channel_mixer\.(m\.)?2\.", ".channel_mixer.conv2."),
)


def remap(sd: dict) -> dict:
    """Reference keys (`features.N.…`, `neck.…`) to ours; our own keys pass through."""
    out = {}
    for key, value in sd.items():
        block = re.match(r"^features\.([1-9]\d*)\.(.*)$", key)
        if block:
            key = f"blocks.{int(block.group(1)) - 1}.{block.group(2)}"
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


@register_encoder("repvit_m0_6_medsam", remap=remap,
                  adapter_targets=r"blocks\.\d+\.channel_mixer\.conv[12]\.c")
def repvit_m0_6_medsam(input_size: int = 256, **kwargs) -> nn.Module:
    """The RepViT-M0.6 student (total stride 4, so only a 256 input gives the 64x64 embedding)."""
    if input_size != 256:
        raise ValueError(f"repvit_m0_6_medsam has total stride 4 and needs input_size 256, got {input_size}")
    return RepVitSam(**kwargs)
