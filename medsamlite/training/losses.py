"""Training losses: the task's box-prompted losses and masked partial-label losses (MONAI where it matches).

Box losses take the decoder's logits (B, 1, H, W), the binary target (B, 1, H, W) and, for the IoU
term, the predicted IoU (B, 1); they add `iou_weight` x MSE(predicted IoU, IoU of the thresholded
mask), which trains SAM's IoU head as LiteMedSAM does. Partial-label losses take per-class logits and
targets (B, C, H, W) and the annotation mask (B, C) of which classes the sample's source data set labels.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss, DiceLoss
from torch import nn


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU (B, 1) of `sigmoid(logits) > 0.5` with `target > 0.5`; 1 where both are empty (the reference gives NaN)."""
    pred, ref = logits > 0, target > 0.5  # sigmoid(x) > 0.5 <=> x > 0
    dims = tuple(range(1, logits.ndim))
    inter = (pred & ref).sum(dims).to(logits.dtype)
    union = (pred | ref).sum(dims).to(logits.dtype)
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).unsqueeze(1)


class BoxLoss(nn.Module):
    """A mask loss plus `iou_weight` x MSE between the predicted IoU and the actual IoU."""

    def __init__(self, iou_weight: float = 1.0) -> None:
        super().__init__()
        self.iou_weight = iou_weight

    def mask_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, target: torch.Tensor, iou_pred: torch.Tensor | None = None
                ) -> torch.Tensor:
        target = target.to(logits.dtype)
        loss = self.mask_loss(logits, target)
        if self.iou_weight:
            if iou_pred is None:
                raise ValueError(f"{type(self).__name__} has iou_weight={self.iou_weight} and needs iou_pred (B, 1)")
            loss = loss + self.iou_weight * F.mse_loss(iou_pred, mask_iou(logits.detach(), target).to(iou_pred.dtype))
        return loss


class LiteMedSAMLoss(BoxLoss):
    """LiteMedSAM's loss: Dice (sigmoid, squared_pred, mean) + BCE + MSE(predicted IoU, IoU), weights 1/1/1.

    DAFT's fine-tuning uses the same definition (`get_loss("daft")`).
    """

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0, iou_weight: float = 1.0) -> None:
        super().__init__(iou_weight)
        self.dice_weight, self.bce_weight = dice_weight, bce_weight
        self.dice = DiceLoss(sigmoid=True, squared_pred=True, reduction="mean")

    def mask_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (self.dice_weight * self.dice(logits, target)
                + self.bce_weight * F.binary_cross_entropy_with_logits(logits, target))


def teacher_mask_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """BCE against the teacher's probabilities plus soft Dice against its mask (logits > 0), for distillation."""
    target = (teacher_logits > 0).to(student_logits.dtype)
    dice = DiceLoss(sigmoid=True, squared_pred=True, reduction="mean")(student_logits, target)
    return dice + F.binary_cross_entropy_with_logits(student_logits, torch.sigmoid(teacher_logits))


class DiceFocal(BoxLoss):
    """MONAI's DiceFocalLoss (sigmoid Dice + sigmoid focal, gamma 2); no IoU term unless `iou_weight` > 0."""

    def __init__(self, lambda_dice: float = 1.0, lambda_focal: float = 1.0, gamma: float = 2.0,
                 iou_weight: float = 0.0) -> None:
        super().__init__(iou_weight)
        self.loss = DiceFocalLoss(sigmoid=True, gamma=gamma, lambda_dice=lambda_dice, lambda_focal=lambda_focal)

    def mask_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target)


class PartialLabelLoss(nn.Module):
    """Masked multi-label loss: per-class sigmoid BCE and Dice over the annotated classes only.

    For each sample, the per-class terms of the classes its source data set annotates are averaged
    (normalised by their count); samples with no annotated class are skipped. Unannotated classes are
    selected out with `torch.where`, so their logits receive exactly zero gradient: a class missing
    from a partially labelled data set is unknown, not background.
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.bce_weight, self.dice_weight = bce_weight, dice_weight
        self.dice = DiceLoss(sigmoid=True, reduction="none")

    def forward(self, logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape or annotated.shape != logits.shape[:2]:
            raise ValueError(f"PartialLabelLoss expects logits and target (B, C, H, W) and annotated (B, C); "
                             f"got {tuple(logits.shape)}, {tuple(target.shape)}, {tuple(annotated.shape)}")
        target = target.to(logits.dtype)
        annotated = annotated.bool()
        per_class = torch.zeros(logits.shape[:2], dtype=logits.dtype, device=logits.device)
        if self.bce_weight:
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2).mean(2)
            per_class = per_class + self.bce_weight * bce
        if self.dice_weight:
            per_class = per_class + self.dice_weight * self.dice(logits, target).flatten(1)
        counts = annotated.sum(1)
        if not counts.any():  # nothing annotated: a zero that keeps the graph
            return logits.sum() * 0
        kept = torch.where(annotated, per_class, torch.zeros_like(per_class))
        per_sample = kept.sum(1)[counts > 0] / counts[counts > 0]
        return per_sample.mean()


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "litemedsam": LiteMedSAMLoss,
    "daft": LiteMedSAMLoss,
    "dice_focal": DiceFocal,
    "partial_bce_dice": PartialLabelLoss,
    "partial_bce": partial(PartialLabelLoss, dice_weight=0.0),
    "partial_dice": partial(PartialLabelLoss, bce_weight=0.0),
}


def get_loss(name: str, **kwargs) -> nn.Module:
    """A loss by registry name (`LOSSES`), built with `kwargs`."""
    try:
        factory = LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; registered: {', '.join(sorted(LOSSES))}") from None
    return factory(**kwargs)
