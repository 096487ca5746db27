"""TinyViT and EfficientViT encoders: contracts the golden outputs do not exercise."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from medsamlite.registry import get_encoder_spec

from conftest import golden_state_dict

ENCODERS = {"tinyvit_medsam": "litemedsam", "efficientvit_l0": "efficientvit_sam_l0",
            "efficientvit_l1": "efficientvit_sam_l1"}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_remap_reference_keys_to_ours_and_ours_pass_through(name):
    spec = get_encoder_spec(name)
    encoder = spec.build(input_size=spec.input_size)
    ours = encoder.state_dict()
    reference = {k[len("image_encoder."):]: v for k, v in golden_state_dict(ENCODERS[name]).items()
                 if k.startswith("image_encoder.")}
    assert set(reference) != set(ours)  # the reference layout really differs
    assert set(spec.remap(reference)) == set(ours)
    assert list(spec.remap(dict(ours))) == list(ours)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_adapter_targets_are_plain_linear_or_conv(name):
    """peft refuses grouped convs, so the default targets must name only Linear / ungrouped Conv2d."""
    spec = get_encoder_spec(name)
    hits = [m for n, m in spec.build(input_size=spec.input_size).named_modules()
            if re.fullmatch(spec.adapter_targets, n)]
    assert hits
    assert all(isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1) for m in hits)


@pytest.mark.parametrize("size", [128, 256])
def test_efficientvit_gives_a_64x64_embedding_at_any_input_size(size):
    encoder = get_encoder_spec("efficientvit_l0").build(input_size=size).eval()
    with torch.no_grad():
        embedding = encoder(torch.rand(1, 3, size, size))
    assert embedding.shape == (1, 256, 64, 64)
    assert torch.isfinite(embedding).all()


def test_tinyvit_refuses_an_input_size_other_than_256():
    with pytest.raises(ValueError, match="input_size 256"):
        get_encoder_spec("tinyvit_medsam").build(input_size=512)
