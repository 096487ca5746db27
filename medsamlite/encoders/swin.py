"""The MedSAM-on-Laptop Swin-T teacher encoder: patch 1, absolute position embedding, stride 4, no neck.

Reference: YSongxiao/MedSAMonLaptop_RepViT `swin/Transformer/SwinTransformer/swin_lzh.py` (`MySwinFormer`,
Yang et al., CVPR 2024 MedSAM on Laptop) as built in `train_val_one_gpu.py`: dims 64/128/256/256, depths
2/2/6/2, heads 2/4/8/8, window 7, PatchMerging after stages 0 and 1 only, one LayerNorm per stage output
(`norm0..norm3`, all in the state_dict; only `norm3` makes the embedding). Our keys are the reference's.

timm's `SwinTransformer`/`SwinTransformerStage` cannot express it: they merge patches at the start of every
later stage (the last stage cannot stay 256 x 64x64), have no absolute position embedding and one final
norm, and their blocks roll before padding to a multiple of the window, whereas the reference (Swin's
detection code) pads first, then rolls, and builds the shift mask on the padded grid. That order matters
whenever a side is not a multiple of 7, i.e. at every stage for a 256 input (256, 128, 64). So timm's
PatchEmbed, PatchMerging, WindowAttention and Mlp are used as is and only the block's windowing (`_attn`)
and the stage/model wiring are written here. `relative_position_index` is timm's non-persistent buffer,
recomputed from the window size: a checkpoint's values are never loaded (`derived_keys`). The position
embedding is bicubic-resized whenever the token grid differs from it (the reference compares widths only).
Attention runs through torch's SDPA by default (`fused_attn=False`: timm's eager path, the reference's op
order, 0.0 difference on the golden case; SDPA: within 3e-6 there and faster on CPU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock, window_partition, window_reverse
from torch import nn

from ..registry import register_encoder


class PadShiftSwinBlock(SwinTransformerBlock):
    """timm's Swin block with detection-style windows: zero-pad to a multiple of the window, then shift."""

    _mask_key: tuple | None = None  # the cached shift mask is a plain attribute: never in the state_dict

    def shift_mask(self, x: torch.Tensor) -> torch.Tensor:
        """The -100 shifted-window mask of the padded grid, built once per grid, device, dtype and mode."""
        key = (x.shape[1], x.shape[2], x.device, x.dtype, torch.is_inference_mode_enabled())
        if self._mask_key != key:
            self._mask, self._mask_key = self.get_attn_mask(x), key
        return self._mask

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, H, W, C = x.shape
        win_h, win_w = self.window_size
        x = F.pad(x, (0, 0, 0, -W % win_w, 0, -H % win_h))
        _, Hp, Wp, _ = x.shape
        shifted = any(self.shift_size)
        if shifted:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        windows = window_partition(x, self.window_size).view(-1, self.window_area, C)
        # padded tokens are attended to, as in the reference; the -100 mask is built on the padded grid
        windows = self.attn(windows, mask=self.shift_mask(x) if shifted else None)
        x = window_reverse(windows.view(-1, win_h, win_w, C), self.window_size, Hp, Wp)
        if shifted:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return x[:, :H, :W, :]


class SwinStage(nn.Module):
    """Blocks (odd ones shifted), then an optional PatchMerging; returns (stage output, next stage input)."""

    def __init__(self, dim: int, out_dim: int, depth: int, num_heads: int, window_size: int,
                 grid: tuple[int, int], drop_path: list[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            PadShiftSwinBlock(dim, grid, num_heads, window_size=window_size, shift_size=(i % 2) * (window_size // 2),
                              always_partition=True, dynamic_mask=True, drop_path=drop_path[i])
            for i in range(depth))
        self.downsample = PatchMerging(dim, out_dim) if out_dim != dim else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            x = block(x)
        return x, (x if self.downsample is None else self.downsample(x))


class SwinMedSam(nn.Module):
    """Patch embedding + absolute position embedding + four stages: (B, 3, S, S) -> (B, 256, S/4, S/4)."""

    def __init__(self, dims: tuple[int, ...] = (64, 128, 256, 256), depths: tuple[int, ...] = (2, 2, 6, 2),
                 num_heads: tuple[int, ...] = (2, 4, 8, 8), window_size: int = 7, pos_embed_size: int = 256,
                 input_size: int = 256, drop_path_rate: float = 0.0, fused_attn: bool = True) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(None, patch_size=1, in_chans=3, embed_dim=dims[0], norm_layer=nn.LayerNorm,
                                      output_fmt="NHWC", strict_img_size=False)
        # learned at the reference's pretraining size; resized to other token grids in `forward`
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, dims[0], pos_embed_size, pos_embed_size))
        trunc_normal_(self.absolute_pos_embed, std=0.02)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        grid = input_size
        for i, (dim, depth, heads) in enumerate(zip(dims, depths, num_heads)):
            out_dim = dims[min(i + 1, len(dims) - 1)]
            self.layers.append(SwinStage(dim, out_dim, depth, heads, window_size, (grid, grid),
                                         rates[sum(depths[:i]):sum(depths[:i + 1])]))
            grid = (grid + 1) // 2 if out_dim != dim else grid
        for block in (b for layer in self.layers for b in layer.blocks):
            # torch's scaled_dot_product_attention (timm's default is its eager path on this timm version):
            # faster on CPU, same embedding within 3e-6 on the golden case
            block.attn.fused_attn = fused_attn
        for i, dim in enumerate(dims):  # the reference normalises every stage output; only the last is used here
            self.add_module(f"norm{i}", nn.LayerNorm(dim))

    def pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """The absolute position embedding (1, C, h, w) for a token grid, bicubic-resized if it differs."""
        pos = self.absolute_pos_embed
        if tuple(pos.shape[-2:]) != tuple(grid):
            pos = F.interpolate(pos, size=grid, mode="bicubic", align_corners=False)
        return pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, H, W, C)
        x = x + self.pos_embed(x.shape[1:3]).permute(0, 2, 3, 1)
        for layer in self.layers:
            out, x = layer(x)
        out = getattr(self, f"norm{len(self.layers) - 1}")(out)
        return out.permute(0, 3, 1, 2).contiguous()


@register_encoder("swin_t_medsam", derived_keys=(r"\.attn\.relative_position_index$",),
                  adapter_targets=r"layers\.\d+\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc[12])")
def swin_t_medsam(input_size: int = 256, **kwargs) -> nn.Module:
    """The Swin-T teacher; its embedding grid is input_size / 4 (64x64 at the reference's 256)."""
    if input_size % 4:
        raise ValueError(f"swin_t_medsam needs an input_size divisible by 4, got {input_size}")
    return SwinMedSam(input_size=input_size, **kwargs)
