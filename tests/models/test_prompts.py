"""Points and mask prompts against Meta's `segment-anything` (the oracle), same weights, every registry model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import medsamlite
from conftest import golden_arrays, golden_case_for, max_rel_error, torch_model

segment_anything = pytest.importorskip("segment_anything", reason="the oracle: pip install medsamlite[test]")

TOL = 1e-4  # max abs error relative to the oracle's max abs value, at f32
MODELS = medsamlite.list_models()


def _oracle(model):
    """SAM's reference prompt encoder and mask decoder at the model's sizes, holding the model's head weights."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    c = model.config
    prompt_encoder = PromptEncoder(embed_dim=c.embed_dim, image_embedding_size=(c.embed_size, c.embed_size),
                                   input_image_size=(c.box_frame, c.box_frame), mask_in_chans=c.mask_in_chans)
    transformer = TwoWayTransformer(depth=c.decoder_depth, embedding_dim=c.embed_dim, mlp_dim=c.decoder_mlp_dim,
                                    num_heads=c.decoder_heads)
    for module in transformer.modules():  # the reference's LayerNorm eps is fixed at 1e-5; some entries differ
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = c.decoder_norm_eps
    mask_decoder = MaskDecoder(transformer_dim=c.embed_dim, transformer=transformer,
                               num_multimask_outputs=c.num_multimask_outputs, iou_head_depth=c.iou_head_depth,
                               iou_head_hidden_dim=c.iou_head_hidden_dim)
    prompt_encoder.load_state_dict(model.prompt_encoder.state_dict(), strict=True)
    mask_decoder.load_state_dict(model.mask_decoder.state_dict(), strict=True)
    return prompt_encoder.eval(), mask_decoder.eval()


def _prompts(model, n: int = 2, p: int = 3, seed: int = 0):
    """n boxes, n x p points (a few padding) and n mask prompts that are the model's own box logits."""
    size = model.config.box_frame
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, 2, generator=g) * size * 0.6
    boxes = torch.cat([corner, corner + torch.rand(n, 2, generator=g) * size * 0.4 + 2], 1).clamp(max=size - 1)
    coords = torch.rand(n, p, 2, generator=g) * (size - 1)
    labels = torch.randint(0, 2, (n, p), generator=g)
    labels[0, -1] = -1
    return boxes, (coords, labels)


# points alone (SAM pads them), a mask alone, a box with a mask, all three, and all three multimask
MIXES = [("points", False), ("mask", False), ("box+mask", False), ("box+points+mask", False),
         ("box+points+mask", True)]


@pytest.fixture(scope="module", params=MODELS)
def setup(request):
    model = torch_model(request.param).eval()
    # a model without a fixture of its own (seeded weights) decodes litemedsam's golden embedding: same shape
    embedding = torch.from_numpy(golden_arrays(golden_case_for(request.param) or "litemedsam")["image_embedding"])
    boxes, points = _prompts(model)
    with torch.no_grad():
        masks = model.decode(embedding, boxes)[0] * 0.5  # previous logits, as refine feeds them back
    return model, _oracle(model), embedding, boxes, points, masks


@pytest.mark.parametrize("mix, multimask", MIXES)
def test_prompts_match_the_oracle(setup, mix, multimask):
    model, (pe, md), embedding, boxes, points, masks = setup
    given = {"boxes": boxes if "box" in mix else None, "points": points if "points" in mix else None,
             "masks": masks if "mask" in mix else None}
    with torch.no_grad():
        sparse, dense = pe(points=given["points"], boxes=given["boxes"], masks=given["masks"])
        expected, expected_iou = md(embedding, pe.get_dense_pe(), sparse, dense, multimask)
        logits, iou = model.decode(embedding, given["boxes"], multimask, points=given["points"], masks=given["masks"])
    assert logits.shape == expected.shape and iou.shape == expected_iou.shape
    assert max_rel_error(logits.numpy(), expected.numpy()) <= TOL, mix
    assert max_rel_error(iou.numpy(), expected_iou.numpy()) <= TOL, mix


def test_factorised_decoder_with_points_matches_the_oracle(setup):
    """Points are more prompt tokens (2 corners + 3 points, one a padding): the factorised form stays exact."""
    model, (pe, md), embedding, boxes, points, _ = setup
    with torch.no_grad():
        sparse, dense = pe(points=points, boxes=boxes, masks=None)
        expected, _ = md(embedding, pe.get_dense_pe(), sparse, dense, False)
        logits, _ = model.decode(embedding, boxes, points=points, decoder="factorised")
    for i in range(len(logits)):
        err = max_rel_error(logits[i].numpy(), expected[i].numpy())
        assert err <= TOL, f"{model.config.name} prompt {i}: {err:.2e}"


def test_box_only_calls_are_unchanged_by_the_new_arguments():
    model = torch_model("litemedsam").eval()
    arrays = golden_arrays("litemedsam")
    embedding, boxes = torch.from_numpy(arrays["image_embedding"]), torch.from_numpy(arrays["boxes3"])
    with torch.no_grad():
        logits, iou = model.decode(embedding, boxes, points=None, masks=None)
    assert max_rel_error(logits.numpy(), arrays["low_res_logits3"]) <= TOL
    assert max_rel_error(iou.numpy(), arrays["iou3"]) <= TOL


def test_bad_prompts_are_one_line_errors():
    model = torch_model("litemedsam")
    embedding = torch.zeros(1, *model.config.embedding_shape)
    with pytest.raises(ValueError, match="no prompt"):
        model.decode(embedding, None)
    with pytest.raises(ValueError, match=r"mask prompt of shape \(1, 1, 64, 64\); expected \(B, 1, 256, 256\)"):
        model.decode(embedding, torch.zeros(1, 4), masks=torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="not a mask prompt"):
        model.decode(embedding, torch.zeros(1, 4), masks=torch.zeros(1, 1, 256, 256), decoder="factorised")


def test_torch_engine_takes_the_same_prompts_on_numpy_arrays():
    from medsamlite.runtime.engine import takes_clicks

    model = torch_model("litemedsam").eval()
    embedding = torch.from_numpy(golden_arrays("litemedsam")["image_embedding"])
    boxes, (coords, labels) = _prompts(model)
    with torch.no_grad():
        masks = model.decode(embedding, boxes)[0]
        expected, _ = model.decode(embedding, boxes, points=(coords, labels), masks=masks)
    for decoder in ("dense", "factorised"):  # factorised: a mask prompt runs dense
        engine = model.as_engine(decoder=decoder)
        assert takes_clicks(engine)
        logits, iou = engine.decode(embedding.numpy(), boxes.numpy(), points=coords.numpy(), labels=labels.numpy(),
                                    masks=masks.numpy())
        assert logits.shape == (2, 1, 256, 256) and iou.shape == (2, 1)
        assert max_rel_error(logits, expected.numpy()) <= TOL
    with pytest.raises(ValueError, match="need labels of shape"):
        engine.decode(embedding.numpy(), None, points=coords.numpy())
    with pytest.raises(ValueError, match="prompt counts differ"):
        engine.decode(embedding.numpy(), boxes.numpy()[:1], points=coords.numpy(), labels=labels.numpy())


def test_the_torch_engine_runs_in_eval_mode_and_leaves_each_module_s_mode_as_it_was():
    """A model being trained (frozen BatchNorm in eval, the rest in train) is validated through the engine."""
    from medsamlite.torch_engine import TorchEngine

    model = medsamlite.create_model("repvit_m0_6_medsam").train()
    model.image_encoder.stem.eval()  # a frozen part
    modes = {name: m.training for name, m in model.named_modules()}
    engine = TorchEngine(model)
    image = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    first = engine.encode(image)
    assert {name: m.training for name, m in model.named_modules()} == modes
    np.testing.assert_array_equal(engine.encode(image), first)  # eval mode: BatchNorm statistics untouched
    engine.decode(first, np.array([[10.0, 20.0, 120.0, 140.0]]))
    assert {name: m.training for name, m in model.named_modules()} == modes
