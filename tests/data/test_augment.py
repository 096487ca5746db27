"""MONAI scale/shift/rotate and intensity jitter: one affine for image and labels, seeded by the item's generator."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medsamlite.data.augment import Augmentation
from medsamlite.data.datasets import NpzSliceDataset
from test_datasets import write_task_layout


def _labelled_image():
    gts = np.zeros((64, 80), np.uint8)
    gts[10:40, 15:50], gts[45:60, 5:25] = 1, 2
    return np.repeat((gts * 100).astype(np.uint8)[..., None], 3, axis=2), gts


def test_the_affine_moves_image_and_labels_together_and_is_seeded():
    image, gts = _labelled_image()
    affine = Augmentation(affine_prob=1.0, intensity_prob=0.0)
    out, labels = affine(image, gts, np.array([1, 2]), np.random.default_rng(0))
    assert labels.dtype == gts.dtype and set(np.unique(labels)) == {0, 1, 2}
    assert (labels != gts).mean() > 0.02  # it moved
    assert (np.abs(out[..., 0] - labels / 2) < 0.1).mean() > 0.97  # bilinear image vs nearest labels
    again = affine(image, gts, np.array([1, 2]), np.random.default_rng(0))
    other = affine(image, gts, np.array([1, 2]), np.random.default_rng(1))
    assert np.array_equal(again[0], out) and np.array_equal(again[1], labels)
    assert not np.array_equal(other[1], labels)
    jitter, kept = Augmentation(affine_prob=0.0, intensity_prob=1.0)(image, gts, np.array([1]), np.random.default_rng(2))
    assert np.array_equal(kept, gts) and 0 < np.abs(jitter[..., 0] - gts / 2).max() < 0.5


def test_dataset_augmentation_is_off_by_default_and_reproducible(tmp_path: Path):
    src = write_task_layout(tmp_path / "src", n2d=1, n3d=0)
    plain = NpzSliceDataset(src, targets_per_image=2)
    augmented = NpzSliceDataset(src, targets_per_image=2, augmentation=Augmentation(affine_prob=1.0))
    assert plain.spec.augmentation is None
    a, b = augmented[0], augmented[0]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["masks"], b["masks"])
    assert not torch.equal(a["masks"], plain[0]["masks"])
    assert a["valid"].all() and (a["masks"].flatten(1).sum(1) > 0).all()
