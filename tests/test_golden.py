"""Checkpoint fidelity: every golden case's reference-layout weights load through `load_checkpoint`
and reproduce the reference outputs (max abs error <= 1e-4 relative to each array's max abs value)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import medsamlite
from medsamlite.preprocess import masks_from_logits, postprocess_logits

from conftest import GOLDEN_CASES, golden_arrays, golden_state_dict, max_rel_error

TOL = 1e-4
REFERENCE_PARAMS = {  # total, image encoder (reference READMEs)
    "litemedsam": (9_791_300, 5_726_740),
    "efficientvit_sam_l0": (34_792_784, 30_728_224),
    "efficientvit_sam_l1": (47_650_128, 43_585_568),
    "repvit_m0_6_medsam": (6_498_660, 2_434_100),
    "swin_t_medsam": (15_253_468, 11_188_908),
}


def test_every_registered_reference_model_has_a_golden_case():
    assert set(REFERENCE_PARAMS) <= set(medsamlite.list_models())
    assert set(GOLDEN_CASES.values()) == set(REFERENCE_PARAMS)


@pytest.fixture(scope="module", params=sorted(GOLDEN_CASES), ids=sorted(GOLDEN_CASES))
def golden(request):
    case = request.param
    model = medsamlite.create_model(GOLDEN_CASES[case])
    report = medsamlite.load_checkpoint(model, golden_state_dict(case), strict=True)
    model.eval()
    arrays = golden_arrays(case)
    with torch.no_grad():
        emb = model.encode(torch.from_numpy(arrays["image"]))
        out = {"image_embedding": emb.numpy()}
        for b in (1, 3):
            logits, iou = model.decode(emb, torch.from_numpy(arrays[f"boxes{b}"]))
            out[f"low_res_logits{b}"], out[f"iou{b}"] = logits.numpy(), iou.numpy()
    return case, model, arrays, out, report


@pytest.mark.parametrize("name", ["image_embedding", "low_res_logits1", "iou1", "low_res_logits3", "iou3"])
def test_golden_outputs(golden, name):
    case, _, arrays, out, _ = golden
    err = max_rel_error(out[name], arrays[name])
    assert err <= TOL, f"{case} {name}: max abs error {err:.2e} of max |ref|"


def test_golden_parameter_counts(golden):
    case, model, *_ = golden
    counts = model.parameter_counts()
    assert (counts["total"], counts["image_encoder"]) == REFERENCE_PARAMS[GOLDEN_CASES[case]]
    assert counts["prompt_encoder"] == 6_220 and counts["mask_decoder"] == 4_058_340


def test_golden_postprocess_litemedsam():
    arrays = golden_arrays("litemedsam")
    post = postprocess_logits(arrays["low_res_logits1"], (192, 256), (300, 400), 256)
    assert max_rel_error(post[:, None], arrays["post_logits1_300x400"]) <= TOL


def test_golden_label_map_litemedsam():
    """The reference 2D multi-box merge (box order, later boxes win) on the stored 3-box logits."""
    arrays = golden_arrays("litemedsam")
    masks = masks_from_logits(arrays["low_res_logits3"][:, 0])
    segs = np.zeros(masks.shape[1:], np.float32)
    for idx, mask in enumerate(masks, 1):
        segs[mask] = idx
    np.testing.assert_array_equal(segs, arrays["seg_label3"])


def test_golden_eval_before_load_is_still_correct():
    """TinyViT caches attention biases in eval mode: loading must refresh them whatever the order."""
    arrays = golden_arrays("litemedsam")
    model = medsamlite.create_model("litemedsam").eval()
    with torch.no_grad():
        model.encode(torch.from_numpy(arrays["image"]))  # fills the cache with the random init
        medsamlite.load_checkpoint(model, golden_state_dict("litemedsam"))
        emb = model.encode(torch.from_numpy(arrays["image"])).numpy()
    assert max_rel_error(emb, arrays["image_embedding"]) <= TOL


def test_golden_save_load_round_trip_is_exact(golden, tmp_path):
    case, model, arrays, out, _ = golden
    medsamlite.save_model(model, tmp_path / case)
    again = medsamlite.load_model(tmp_path / case)
    assert again.config == model.config
    with torch.no_grad():
        emb = again.encode(torch.from_numpy(arrays["image"])).numpy()
    np.testing.assert_array_equal(emb, out["image_embedding"])


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
    assert max_rel_error(emb.numpy(), arrays["image_embedding"]) <= TOL
    assert max_rel_error(logits.numpy(), arrays["low_res_logits3"]) <= TOL
