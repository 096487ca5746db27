"""Every training loss against values computed by hand on tiny tensors."""
from __future__ import annotations

import math

import pytest
import torch

from medsamlite.training.losses import (DiceFocal, LiteMedSAMLoss, PartialLabelLoss, get_loss, mask_iou)

LOGITS = [0.0, 2.0, -1.0, 1.0]
TARGET = [0.0, 1.0, 0.0, 1.0]
SMOOTH = 1e-5  # MONAI's smooth_nr / smooth_dr


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce(x: float, t: float) -> float:
    return -(t * math.log(sig(x)) + (1 - t) * math.log(1 - sig(x)))


def dice(xs, ts, squared: bool) -> float:
    ps = [sig(x) for x in xs]
    inter = sum(p * t for p, t in zip(ps, ts))
    denom = sum(p * p if squared else p for p in ps) + sum(t * t if squared else t for t in ts)
    return 1 - (2 * inter + SMOOTH) / (denom + SMOOTH)


def as_map(values, shape=(1, 1, 2, 2)) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(shape)


def test_mask_iou_thresholds_at_half_and_counts_empty_as_one():
    logits = as_map([0.0, 2.0, -1.0, 1.0])  # sigmoid(0) = 0.5 is not > 0.5
    assert mask_iou(logits, as_map([0, 1, 1, 1])).item() == pytest.approx(2 / 3)
    assert mask_iou(-torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).item() == 1.0


def test_litemedsam_loss_hand_computed():
    iou_pred = torch.tensor([[0.5]], dtype=torch.float64)
    expected = (dice(LOGITS, TARGET, squared=True)
                + sum(bce(x, t) for x, t in zip(LOGITS, TARGET)) / 4
                + (0.5 - 1.0) ** 2)  # the thresholded mask equals the target: IoU 1
    loss = LiteMedSAMLoss()(as_map(LOGITS), as_map(TARGET), iou_pred)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert type(get_loss("daft")) is LiteMedSAMLoss


def test_litemedsam_loss_weights_and_batch_mean():
    logits = torch.cat([as_map(LOGITS), as_map([1.0, -2.0, 0.5, 3.0])])
    target = torch.cat([as_map(TARGET), as_map([1.0, 0.0, 0.0, 0.0])])
    iou_pred = torch.tensor([[0.2], [0.9]], dtype=torch.float64)
    second = [1.0, -2.0, 0.5, 3.0], [1.0, 0.0, 0.0, 0.0]
    iou_second = 1 / 3  # predicted {0, 2, 3}, target {0}
    expected_dice = (dice(LOGITS, TARGET, True) + dice(*second, True)) / 2
    expected_mse = ((0.2 - 1.0) ** 2 + (0.9 - iou_second) ** 2) / 2
    loss = LiteMedSAMLoss(dice_weight=2.0, bce_weight=0.0, iou_weight=3.0)(logits, target, iou_pred)
    assert loss.item() == pytest.approx(2 * expected_dice + 3 * expected_mse, rel=1e-9)


def test_litemedsam_loss_needs_iou_prediction():
    with pytest.raises(ValueError, match="iou_pred"):
        LiteMedSAMLoss()(as_map(LOGITS), as_map(TARGET))


def test_dice_focal_hand_computed():
    gamma = 2.0
    focal = sum((1 - (sig(x) if t else 1 - sig(x))) ** gamma * bce(x, t) for x, t in zip(LOGITS, TARGET)) / 4
    expected = dice(LOGITS, TARGET, squared=False) + focal
    assert DiceFocal()(as_map(LOGITS), as_map(TARGET)).item() == pytest.approx(expected, rel=1e-7)
    weighted = DiceFocal(lambda_dice=0.5, lambda_focal=2.0, iou_weight=1.0)(
        as_map(LOGITS), as_map(TARGET), torch.tensor([[0.75]], dtype=torch.float64))
    assert weighted.item() == pytest.approx(0.5 * dice(LOGITS, TARGET, False) + 2 * focal + 0.25 ** 2, rel=1e-7)


def _partial_case():
    # two samples, three classes, 1x2 pixels each
    logits = torch.tensor([[[[2.0, -1.0]], [[5.0, 5.0]], [[0.5, 0.0]]],
                           [[[-3.0, 1.0]], [[1.0, -1.0]], [[40.0, -40.0]]]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[[[1, 0]], [[0, 0]], [[1, 1]]],
                           [[[0, 1]], [[0, 1]], [[0, 0]]]], dtype=torch.float64)
    annotated = torch.tensor([[True, False, True], [False, True, False]])
    return logits, target, annotated


def _per_class(xs, ts, bce_weight, dice_weight):
    return bce_weight * sum(bce(x, t) for x, t in zip(xs, ts)) / len(xs) + dice_weight * dice(xs, ts, False)


@pytest.mark.parametrize("name,bw,dw", [("partial_bce_dice", 1, 1), ("partial_bce", 1, 0), ("partial_dice", 0, 1)])
def test_partial_label_loss_hand_computed(name, bw, dw):
    logits, target, annotated = _partial_case()
    sample0 = (_per_class([2.0, -1.0], [1, 0], bw, dw) + _per_class([0.5, 0.0], [1, 1], bw, dw)) / 2
    sample1 = _per_class([1.0, -1.0], [0, 1], bw, dw) / 1
    loss = get_loss(name)(logits, target, annotated)
    assert loss.item() == pytest.approx((sample0 + sample1) / 2, rel=1e-9)


def test_partial_label_loss_sends_no_gradient_to_unannotated_classes():
    logits, target, annotated = _partial_case()
    PartialLabelLoss()(logits, target, annotated).backward()
    grad = logits.grad
    assert torch.all(grad[~annotated] == 0)  # exactly zero, not just small
    assert torch.all(grad[annotated].abs().sum(-1).sum(-1) > 0)


def test_partial_label_loss_ignores_unannotated_values_and_empty_samples():
    logits, target, annotated = _partial_case()
    base = PartialLabelLoss()(logits, target, annotated).item()
    changed = logits.detach().clone()
    changed[0, 1] = -7.0
    changed[1, 2] = 3.0
    assert PartialLabelLoss()(changed, target, annotated).item() == base
    # a sample with no annotated class does not count in the mean
    empty = torch.tensor([[True, False, True], [False, False, False]])
    only0 = (_per_class([2.0, -1.0], [1, 0], 1, 1) + _per_class([0.5, 0.0], [1, 1], 1, 1)) / 2
    assert PartialLabelLoss()(logits, target, empty).item() == pytest.approx(only0, rel=1e-9)
    zero = PartialLabelLoss()(logits, target, torch.zeros_like(annotated))
    assert zero.item() == 0.0 and zero.requires_grad


def test_partial_label_loss_rejects_bad_shapes():
    logits, target, annotated = _partial_case()
    with pytest.raises(ValueError, match="annotated"):
        PartialLabelLoss()(logits, target, annotated[:, :2])


def test_get_loss_unknown_name_lists_registered():
    with pytest.raises(KeyError, match="litemedsam"):
        get_loss("nope")
