"""The factorised mask decoder against the dense one: every registry model, golden weights and embeddings, many boxes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import medsamlite
from conftest import golden_arrays, golden_case_for, golden_state_dict, max_rel_error, torch_model
from medsamlite.models.factorised_decoder import FactorisedMaskDecoder
from medsamlite.runtime import Predictor

TOL = 1e-4  # per box: max abs difference relative to the dense logits' max abs value, at f32


def _boxes(size: int, n: int, seed: int = 0) -> torch.Tensor:
    """n boxes of every size, some touching the border, in the S frame."""
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, 2, generator=g) * size * 0.8
    extent = torch.rand(n, 2, generator=g) * size * 0.5 + 1
    return torch.cat([corner, corner + extent], 1).clamp(max=size - 1)


CASES = [(name, False) for name in medsamlite.list_models()] + [("litemedsam", True)]


@pytest.mark.parametrize("name, multimask", CASES)
def test_factorised_logits_equal_dense_on_the_golden_embedding(name, multimask):
    model = torch_model(name).eval()
    arrays = golden_arrays(golden_case_for(name))
    embedding = torch.from_numpy(arrays["image_embedding"])
    scale = model.config.input_size / 256  # the golden boxes are in a 256 frame
    boxes = torch.cat([torch.from_numpy(arrays["boxes3"]) * scale, _boxes(model.config.input_size, 17)])
    with torch.no_grad():
        dense, dense_iou = model.decode(embedding, boxes, multimask)
        fact, fact_iou = model.decode(embedding, boxes, multimask, decoder="factorised")
    assert fact.shape == dense.shape and fact_iou.shape == dense_iou.shape
    for i in range(len(boxes)):
        err = max_rel_error(fact[i].numpy(), dense[i].numpy())
        assert err <= TOL, f"{name} box {i}: factorised logits differ by {err:.2e} of max |dense|"
    np.testing.assert_allclose(fact_iou.numpy(), dense_iou.numpy(), atol=1e-4)


def test_factorised_equals_the_reference_outputs():
    model = torch_model("litemedsam").eval()
    arrays = golden_arrays("litemedsam")
    with torch.no_grad():
        logits, iou = model.decode(torch.from_numpy(arrays["image_embedding"]), torch.from_numpy(arrays["boxes3"]),
                                   decoder="factorised")
    assert max_rel_error(logits.numpy(), arrays["low_res_logits3"]) <= TOL
    assert max_rel_error(iou.numpy(), arrays["iou3"]) <= TOL


def test_prepared_once_serves_box_batches_and_shares_the_decoder_parameters():
    model = torch_model("litemedsam").eval()
    factorised = FactorisedMaskDecoder(model.mask_decoder)
    assert all(a is b for a, b in zip(factorised.parameters(), model.mask_decoder.parameters()))
    assert not any(k.startswith("factorised") for k in model.state_dict())
    embedding = torch.from_numpy(golden_arrays("litemedsam")["image_embedding"])
    boxes = _boxes(256, 10, seed=1)
    with torch.no_grad():
        prepared = model.prepare(embedding)
        assert list(prepared) == factorised.names
        whole, _ = model.decode_prepared(prepared, boxes)
        parts = torch.cat([model.decode_prepared(prepared, boxes[i:i + 3])[0] for i in range(0, 10, 3)])
    torch.testing.assert_close(whole, parts, atol=1e-5, rtol=1e-5)


def test_factorised_needs_one_shared_embedding_and_a_known_name():
    model = torch_model("litemedsam")
    embeddings = torch.zeros(2, *model.config.embedding_shape)
    with pytest.raises(ValueError, match="one shared embedding"):
        model.decode(embeddings, torch.zeros(2, 4), decoder="factorised")
    with pytest.raises(ValueError, match="expected one of dense, factorised"):
        model.decode(embeddings[:1], torch.zeros(1, 4), decoder="sparse")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_pipeline_label_maps_match_the_reference(kind):
    """The reference pipeline cases: same labels as the reference except where the dense logit is ~0."""
    model = medsamlite.create_model("litemedsam")
    medsamlite.load_checkpoint(model, golden_state_dict("litemedsam"), strict=True)
    arrays = golden_arrays("litemedsam", "pipeline.npz")
    predictor = Predictor(model.eval(), decoder="factorised")
    predict = predictor.predict_2d if kind == "2d" else predictor.predict_3d
    segs, expected = predict(arrays[f"case{kind}_imgs"], arrays[f"case{kind}_boxes"]), arrays[f"case{kind}_segs"]
    assert (segs != expected).mean() <= 1e-4, f"{(segs != expected).sum()} pixels differ"
    for label in range(1, len(arrays[f"case{kind}_boxes"]) + 1):
        assert _dice(segs == label, expected == label) >= 0.9999
