"""The model matrix: every registered model through build, shapes, checkpoint errors and save/load."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import medsamlite
from medsamlite.checkpoints import CheckpointError, load_checkpoint

MODELS = medsamlite.list_models()


def test_registry_lists_the_reference_models():
    assert {"litemedsam", "efficientvit_sam_l0", "efficientvit_sam_l1", "efficientvit_sam_l0_256",
            "repvit_m0_6_medsam", "swin_t_medsam"} <= set(MODELS)
    assert {"tinyvit_medsam", "efficientvit_l0", "efficientvit_l1", "repvit_m0_6_medsam",
            "swin_t_medsam"} <= set(medsamlite.list_encoders())


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    torch.manual_seed(0)
    return medsamlite.create_model(request.param)


def test_encode_decode_shapes(model):
    s = model.config.input_size
    with torch.no_grad():
        emb = model.encode(torch.rand(1, 3, s, s))
        assert emb.shape == (1, *model.config.embedding_shape)
        boxes = torch.tensor([[10.0, 20.0, s / 2, s - 5], [0, 0, s - 1, s - 1]])
        logits, iou = model.decode(emb, boxes)
        assert logits.shape == (2, 1, model.config.low_res_size, model.config.low_res_size)
        assert iou.shape == (2, 1)
        multi, multi_iou = model.decode(emb, boxes, multimask_output=True)
        assert multi.shape[:2] == (2, 3) and multi_iou.shape == (2, 3)
        assert torch.isfinite(logits).all()


def test_boxes_decoded_together_equal_one_by_one(model):
    s = model.config.input_size
    with torch.no_grad():
        emb = model.encode(torch.rand(1, 3, s, s))
        boxes = torch.tensor([[10.0, 20.0, s / 2, s - 5], [s / 4, s / 4, s - 1, s - 1]])
        together, _ = model.decode(emb, boxes)
        alone = torch.cat([model.decode(emb, b[None])[0] for b in boxes])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


def test_save_load_round_trip(model, tmp_path):
    medsamlite.save_model(model, tmp_path)
    again = medsamlite.load_model(tmp_path)
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


def test_strict_load_names_missing_unexpected_and_mismatched(model):
    sd = dict(model.state_dict())
    key = next(iter(sd))
    sd.pop(key)
    sd["image_encoder.not_a_layer.weight"] = torch.zeros(1)
    decoder_key = "mask_decoder.iou_token.weight"
    sd[decoder_key] = torch.zeros(2, 256)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, sd)
    text = str(err.value)
    assert key in text and "not_a_layer" in text and decoder_key in text and model.config.name in text


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "module.", "model.", "lightning", "pickled"])
def test_wrapped_layouts_load(wrap, tmp_path):
    model = medsamlite.create_model("litemedsam")
    sd = model.state_dict()
    obj = {"plain": sd, "model": {"model": sd, "epoch": 3}, "state_dict": {"state_dict": sd},
           "module.": {"model": {"module." + k: v for k, v in sd.items()}},
           "model.": {"model." + k: v for k, v in sd.items()},
           "lightning": {"state_dict": {"model." + k: v for k, v in sd.items()}, "epoch": 1},
           "pickled": model}[wrap]
    torch.save(obj, tmp_path / "ckpt.pth")
    other = medsamlite.create_model("litemedsam")
    load_checkpoint(other, tmp_path / "ckpt.pth")
    for k, v in other.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_encoder_swap_keeps_heads():
    model = medsamlite.create_model("litemedsam", encoder="repvit_m0_6_medsam")
    assert model.config.encoder == "repvit_m0_6_medsam"
    assert model.parameter_counts()["image_encoder"] == 2_434_100
    assert model.parameter_counts()["mask_decoder"] == 4_058_340


def test_unknown_model_error_lists_registered():
    with pytest.raises(KeyError, match="litemedsam"):
        medsamlite.create_model("no_such_model")


def test_import_is_light():
    code = "import sys, medsamlite; medsamlite.list_models(); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_models_cli_prints_table():
    out = subprocess.run([sys.executable, "-m", "medsamlite", "models", "litemedsam"], check=True,
                         capture_output=True, text=True).stdout
    assert "litemedsam" in out and "9,791,300" in out
