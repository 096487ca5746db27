"""TinyViT and EfficientViT encoders: contracts the golden outputs do not exercise."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import medsamlite
from conftest import golden_arrays, golden_state_dict, max_rel_error
from medsamlite.factory import get_encoder_spec

ENCODERS = {"tinyvit_medsam": "litemedsam", "efficientvit_l0": "efficientvit_sam_l0",
            "efficientvit_l1": "efficientvit_sam_l1"}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_remap_reference_keys_to_ours_and_ours_pass_through(name):
    spec = get_encoder_spec(name)
    encoder = spec.build(input_size=medsamlite.get_model_config(ENCODERS[name]).input_size)
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
    hits = [m for n, m in spec.build(input_size=medsamlite.get_model_config(ENCODERS[name]).input_size).named_modules()
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


def test_golden_eval_before_load_is_still_correct():
    """TinyViT caches attention biases in eval mode: loading must refresh them whatever the order."""
    arrays = golden_arrays("litemedsam")
    model = medsamlite.create_model("litemedsam").eval()
    with torch.no_grad():
        model.encode(torch.from_numpy(arrays["image"]))  # fills the cache with the random init
        medsamlite.load_checkpoint(model, golden_state_dict("litemedsam"))
        emb = model.encode(torch.from_numpy(arrays["image"])).numpy()
    assert max_rel_error(emb, arrays["image_embedding"]) <= 1e-4


def test_golden_repvit_fused_for_inference_keeps_the_reference_outputs():
    model = medsamlite.create_model("repvit_m0_6_medsam")
    medsamlite.load_checkpoint(model, golden_state_dict("repvit_m0_6"), strict=True)
    model.eval()
    arrays = golden_arrays("repvit_m0_6")
    before = sum(p.numel() for p in model.image_encoder.parameters())
    model.image_encoder.fuse()
    assert sum(p.numel() for p in model.image_encoder.parameters()) < before  # BN and RepVGG branches folded
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.image_encoder.modules())
    with torch.no_grad():
        emb = model.encode(torch.from_numpy(arrays["image"]))
        logits, _ = model.decode(emb, torch.from_numpy(arrays["boxes3"]))
    assert max_rel_error(emb.numpy(), arrays["image_embedding"]) <= 1e-4
    assert max_rel_error(logits.numpy(), arrays["low_res_logits3"]) <= 1e-4
