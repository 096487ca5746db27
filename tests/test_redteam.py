"""Red-team cases (issue 16): what an attacker or a careless user tried, each reported in one line or handled.

Every test here failed on the code the issue was filed against.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fakes import BoxEngine
from medsamlite.runtime import Predictor
from medsamlite.runtime.npz import CaseError
from medsamlite.runtime.preprocess import preprocess_image


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text.strip(), text
    return text


# no silent NaN ------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1e308, -1e308, 1e300])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_extreme_finite_images_normalise_as_a_sane_copy(scale: float, dtype: type) -> None:
    sane = np.random.default_rng(0).uniform(-1, 1, (90, 60)).astype(dtype)
    scale = float(np.clip(scale, -3e38, 3e38)) if dtype == np.float32 else scale
    extreme = (sane.astype(np.float64) * scale).astype(dtype)
    assert np.isfinite(extreme).all()
    got, shape = preprocess_image(extreme, 256)
    want, want_shape = preprocess_image(sane if scale > 0 else -sane, 256)
    assert shape == want_shape and np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


class NaNEngine(BoxEngine):
    """An engine whose encoder (or decoder) returns NaN, as a corrupted compiled model did."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    def encode(self, images: np.ndarray) -> np.ndarray:
        out = super().encode(images)
        return np.full_like(out, np.nan) if self.where == "encode" else out

    def decode(self, embeddings: np.ndarray, boxes: np.ndarray):
        low, iou = super().decode(embeddings, boxes)
        if self.where == "decode":
            low[:, :, :8] = np.inf
        return low, iou


@pytest.mark.parametrize("where", ["encode", "decode"])
def test_non_finite_embeddings_or_logits_are_a_case_error_not_an_empty_mask(where: str, tmp_path) -> None:
    predictor = Predictor(NaNEngine(where))
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    with pytest.raises(CaseError, match="NaN/inf") as error:
        predictor.predict_2d(image, np.array([[4, 4, 40, 40]]))
    one_line(error)
    np.savez(tmp_path / "2DBox_x.npz", imgs=image, boxes=np.array([[4, 4, 40, 40]]))
    with pytest.raises(CaseError, match="NaN/inf"):
        predictor.predict_file(tmp_path / "2DBox_x.npz", tmp_path / "out" / "2DBox_x.npz")
    assert not (tmp_path / "out" / "2DBox_x.npz").exists()


# Predictor given what numpy cannot read ----------------------------------------------------------------

@pytest.mark.parametrize("tensor", ["requires_grad", "bf16"])
def test_torch_tensors_numpy_cannot_read_are_one_line_errors(tensor: str) -> None:
    image = torch.rand(32, 32, 3, requires_grad=True) if tensor == "requires_grad" else \
        torch.rand(32, 32, 3).to(torch.bfloat16)
    with pytest.raises(CaseError, match="key 'imgs'.*numpy array") as error:
        Predictor(BoxEngine()).predict_2d(image, np.array([[2, 2, 20, 20]]))
    one_line(error)
    boxes = torch.tensor([[2.0, 2, 20, 20]], requires_grad=True)
    with pytest.raises(CaseError, match="key 'boxes'"):
        Predictor(BoxEngine()).predict_2d(np.zeros((32, 32, 3), np.uint8), boxes)


def test_predict_file_to_a_folder_is_a_one_line_error(tmp_path) -> None:
    np.savez(tmp_path / "2DBox_x.npz", imgs=np.zeros((16, 16, 3), np.uint8), boxes=np.array([[1, 1, 9, 9]]))
    (tmp_path / "out").mkdir()
    with pytest.raises(CaseError, match="is a folder") as error:
        Predictor(BoxEngine()).predict_file(tmp_path / "2DBox_x.npz", tmp_path / "out")
    one_line(error)
    assert list((tmp_path / "out").iterdir()) == []
