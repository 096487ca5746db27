"""A tiny trainable SamLite and tiny 2D cases for the training tests (also registered in subprocesses)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medsamlite import registry
from medsamlite.config import ModelConfig
from medsamlite.models.common import LayerNorm2d
from medsamlite.registry import EncoderSpec

GRID, DIM = 16, 32  # embedding grid and width of the tiny test models (low-res masks 64 x 64)
ENCODER = "tiny_cnn_test"
CONFIG = ModelConfig(name="tiny_test", encoder=ENCODER, input_size=64, embed_size=GRID, embed_dim=DIM,
                     decoder_mlp_dim=64, iou_head_hidden_dim=32, decoder_heads=4)


def tiny_encoder(input_size: int = 64, width: int = 8) -> nn.Module:
    """Two stride-2 convs, pooled to the 16 x 16 grid: a trainable stand-in cheap enough for CI."""
    return nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.GELU(), nn.Conv2d(width, 2 * width, 3, 2, 1), nn.GELU(),
                         nn.AdaptiveAvgPool2d(GRID), nn.Conv2d(2 * width, DIM, 1), LayerNorm2d(DIM))


SPEC = EncoderSpec(ENCODER, tiny_encoder, adapter_targets=r"[0-9]")  # the 1x1 and 3x3 convs


class FeedForward(nn.Module):
    """A residual 1x1-conv MLP: the feed-forward block AdaptFormer looks for (children conv1, conv2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1, self.act, self.conv2 = nn.Conv2d(dim, 2 * dim, 1), nn.GELU(), nn.Conv2d(2 * dim, dim, 1)

    def forward(self, x):
        return x + self.conv2(self.act(self.conv1(x)))


FFN_ENCODER = "tiny_ffn_test"
FFN_CONFIG = CONFIG.replace(name="tiny_ffn_test", encoder=FFN_ENCODER)
FFN_SPEC = EncoderSpec(FFN_ENCODER, lambda input_size=64: nn.Sequential(*tiny_encoder(input_size), FeedForward(DIM)),
                       adapter_targets=r"[0-9]|7\.conv[12]")


def register() -> None:
    """Register the tiny encoders in this process (subprocesses do it through a sitecustomize)."""
    registry._ENCODERS[ENCODER] = SPEC
    registry._ENCODERS[FFN_ENCODER] = FFN_SPEC


def decoder_only(model: nn.Module) -> tuple[str, ...]:
    """Freeze names leaving the decoder trainable, minus the attention key biases.

    Softmax is invariant to a key bias, so its true gradient is zero and what autograd returns is
    round-off, which Adam scales up to +-lr: runs that should agree would differ there by ~lr.
    """
    return ("image_encoder", "prompt_encoder", *(n for n, _ in model.named_parameters() if n.endswith("k_proj.bias")))


def sitecustomize(folder: Path) -> Path:
    """A folder whose sitecustomize.py registers the tiny encoder at interpreter start (for PYTHONPATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\nimport tiny\ntiny.register()\n")
    return folder


def write_cases(root: Path, n: int, seed: int = 0, size: int = 64) -> Path:
    """2D cases in the task layout: one to three bright ellipses (labels 1..3) on a noisy background."""
    rng = np.random.default_rng(seed)
    (root / "imgs").mkdir(parents=True)
    (root / "gts").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        image = rng.normal(60, 20, size=(size, size)).clip(0, 255)
        gts = np.zeros((size, size), np.uint8)
        for label in range(1, 1 + rng.integers(1, 4)):
            cy, cx = rng.integers(14, size - 14, size=2)
            ry, rx = rng.integers(5, 12, size=2)
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            gts[inside & (gts == 0)] = label
            image[inside] += rng.uniform(80, 140)
        image = np.repeat(image.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
        name = f"2DBox_{('Endoscopy', 'Dermoscopy')[i % 2]}_{i:04d}.npz"
        np.savez_compressed(root / "imgs" / name, imgs=image, boxes=np.zeros((0, 4)), spacing=np.ones(2))
        np.savez_compressed(root / "gts" / name, gts=gts)
    return root


@pytest.fixture(autouse=True)
def registered_tiny(monkeypatch):
    """Autouse where a test module imports it: the tiny encoder registered for the test, one torch thread."""
    monkeypatch.setitem(registry._ENCODERS, ENCODER, SPEC)
    torch.set_num_threads(1)


def cases_fixture(n: int):
    """A module-scoped `case_dir` fixture: `n` tiny cases written once per test module."""
    @pytest.fixture(scope="module")
    def case_dir(tmp_path_factory) -> Path:
        return write_cases(tmp_path_factory.mktemp("cases"), n)
    return case_dir
