"""Swin teacher details the golden test cannot see: derived buffers, other token grids, the pad-then-shift order."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock

from medsamlite.encoders.swin import PadShiftSwinBlock, SwinMedSam, swin_t_medsam
from medsamlite.factory import get_encoder_spec


def _tiny(**kwargs) -> SwinMedSam:
    """A small encoder of the same wiring, fast enough to run forward passes in a test."""
    return SwinMedSam(dims=(8, 16, 32, 32), depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 2), pos_embed_size=32,
                      **kwargs).eval()


def test_relative_position_index_is_derived_not_stored():
    model = swin_t_medsam()
    keys = model.state_dict().keys()
    assert not any(k.endswith(("relative_position_index", "attn_mask")) for k in keys)
    spec = get_encoder_spec("swin_t_medsam")
    assert spec.derived_keys == (r"\.attn\.relative_position_index$",)
    # the standard index of a 7x7 window: (dy + 6) * 13 + (dx + 6) for query i, key j
    yy, xx = torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij")
    y, x = yy.flatten(), xx.flatten()
    expected = (y[:, None] - y[None, :] + 6) * 13 + (x[:, None] - x[None, :] + 6)
    blocks = [b for layer in model.layers for b in layer.blocks]
    assert len(blocks) == 12
    for block in blocks:
        torch.testing.assert_close(block.attn.relative_position_index, expected, rtol=0, atol=0)


def test_loading_a_checkpoint_index_is_refused():
    """The buffer is non-persistent, so a raw load_state_dict of the reference key fails loudly."""
    model = _tiny()
    index = torch.zeros(49, 49, dtype=torch.long)
    sd = {**model.state_dict(), "layers.0.blocks.0.attn.relative_position_index": index}
    with pytest.raises(RuntimeError, match="relative_position_index"):
        model.load_state_dict(sd, strict=True)


def test_shift_mask_is_cached_outside_the_state_dict():
    model = _tiny()
    keys = set(model.state_dict())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        first = model(x)
        again = model(x)  # from the cached masks
        block = model.layers[0].blocks[1]
        assert block._mask.shape == (25, 49, 49)  # 32x32 tokens padded to 35x35: 5x5 windows
        model(torch.rand(1, 3, 20, 20))
        assert block._mask.shape == (9, 49, 49)  # another grid rebuilds it (20 -> 21)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert set(block._mask.unique().tolist()) == {-100.0, 0.0}
    assert set(model.state_dict()) == keys


def test_position_embedding_resized_bicubically_for_another_grid():
    model = _tiny()
    pos = model.absolute_pos_embed
    assert model.pos_embed((32, 32)) is pos
    torch.testing.assert_close(model.pos_embed((20, 20)), F.interpolate(pos, size=(20, 20), mode="bicubic"))
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 32, 8, 8)
        assert model(torch.rand(2, 3, 20, 20)).shape == (2, 32, 5, 5)


def test_stage_dims_merges_and_shifts():
    model = swin_t_medsam()
    assert [layer.downsample is not None for layer in model.layers] == [True, True, False, False]
    assert [layer.blocks[0].dim for layer in model.layers] == [64, 128, 256, 256]
    assert [b.shift_size for b in model.layers[2].blocks] == [(0, 0), (3, 3)] * 3


@pytest.mark.parametrize("side, same", [(14, True), (16, False)])
def test_pad_then_shift_matches_timm_only_without_padding(side, same):
    """timm rolls and then pads; the reference pads and then rolls: equal on 14x14 tokens, not on 16x16."""
    torch.manual_seed(0)
    kw = dict(dim=16, input_resolution=(side, side), num_heads=2, window_size=7, shift_size=3,
              always_partition=True, dynamic_mask=True)
    ours, timm_block = PadShiftSwinBlock(**kw).eval(), SwinTransformerBlock(**kw).eval()
    timm_block.load_state_dict(ours.state_dict())
    x = torch.randn(1, side, side, 16)
    with torch.no_grad():
        close = torch.allclose(ours(x), timm_block(x), atol=1e-6)
    assert close is same
