"""Checkpoint layouts users bring load strictly; pickled modules only when trusted."""
from __future__ import annotations

import pytest
import torch

import medsamlite
from medsamlite.checkpoints import CheckpointError, load_checkpoint


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "module.", "model.", "lightning", "student"])
def test_wrapped_layouts_load(wrap, tmp_path):
    model = medsamlite.create_model("litemedsam")
    sd = model.state_dict()
    obj = {"plain": sd, "model": {"model": sd, "epoch": 3}, "state_dict": {"state_dict": sd},
           "module.": {"model": {"module." + k: v for k, v in sd.items()}},
           "model.": {"model." + k: v for k, v in sd.items()},
           "lightning": {"state_dict": {"model." + k: v for k, v in sd.items()}, "epoch": 1},
           "student": {("student_encoder." + k[len("image_encoder."):] if k.startswith("image_encoder.") else k): v
                       for k, v in sd.items()}}[wrap]
    torch.save(obj, tmp_path / "ckpt.pth")
    other = medsamlite.create_model("litemedsam")
    load_checkpoint(other, tmp_path / "ckpt.pth")
    for k, v in other.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_a_pickled_module_loads_only_when_trusted_and_converts_to_safetensors(tmp_path):
    from medsamlite.checkpoints import convert_checkpoint

    model = medsamlite.create_model("litemedsam")
    torch.save(model, tmp_path / "whole.pth")
    with pytest.raises(CheckpointError, match="trust") as error:
        load_checkpoint(medsamlite.create_model("litemedsam"), tmp_path / "whole.pth")
    assert len(str(error.value).splitlines()) == 1
    other = medsamlite.create_model("litemedsam")
    load_checkpoint(other, tmp_path / "whole.pth", trust=True)
    converted = convert_checkpoint(tmp_path / "whole.pth", tmp_path / "whole.safetensors")
    again = medsamlite.create_model("litemedsam")
    load_checkpoint(again, converted)
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v) and torch.equal(again.state_dict()[k], v), k


def test_unexpected_keys_are_named_as_the_checkpoint_names_them():
    model = medsamlite.create_model("litemedsam")
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    sd["module.image_encoder.layers.9.extra.c.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(model, sd)
    assert "module.image_encoder.layers.9.extra.c.weight" in str(error.value)
