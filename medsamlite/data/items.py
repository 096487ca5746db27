"""One training item from one 2D image (or slice), its label map, its labels and a seeded generator.

`build_item` is the only place an item is made: `NpzSliceDataset` (from `.npz` cases) and
`PreparedDataset` (from the prepared memory-mapped layout) both call it, so for the same slice,
labels and generator they yield the same tensors. The draws happen in a fixed order: the target
label(s), the flips, then for each target its box widening, then the optional MONAI augmentation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..runtime.preprocess import pad_bottom_right, preprocess_image, resize_longest_side, scale_boxes
from .augment import Augmentation


@dataclass(frozen=True)
class ItemSpec:
    """How items are built: model input, low-res mask size, targets per image and augmentation."""

    input_size: int = 256
    normalization: str = "minmax"
    mask_size: int = 256
    box_shift: int = 5
    flips: bool = True
    full_mask: bool = False
    num_classes: int | None = None
    targets_per_image: int | None = None  # None: one target, keys `box` / `mask` / `label`
    augmentation: Augmentation | None = field(default=None)  # None: flips only (the reference's recipe)

    def __post_init__(self) -> None:
        if self.targets_per_image is not None and self.targets_per_image < 1:
            raise ValueError(f"targets_per_image must be >= 1 or None, got {self.targets_per_image}")


def flip(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Random left-right and up-down flips (each with p = 0.5), the same for every array."""
    for axis in (1, 0):
        if rng.random() < 0.5:
            arrays = [np.flip(a, axis=axis) for a in arrays]
    return [np.ascontiguousarray(a) for a in arrays]


def mask_to_frame(mask: np.ndarray, input_size: int, size: int) -> np.ndarray:
    """A binary (H, W) mask in the model's padded S frame, then at `size` (the decoder's low-res frame)."""
    framed = pad_bottom_right(resize_longest_side(mask.astype(np.float32), input_size) >= 0.5, input_size)
    if size != input_size:  # area-average then threshold: thin structures survive better than nearest
        framed = resize_longest_side(framed.astype(np.float32), size) >= 0.5
    return framed.astype(np.float32)


def _box(mask: np.ndarray, spec: ItemSpec, resized: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The mask's bounding box in the S frame (as `scale_boxes` maps a task box), widened by 0..box_shift px."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))  # cheaper than np.nonzero
    tight = np.array([[cols[0], rows[0], cols[-1], rows[-1]]], dtype=np.float64)
    box = scale_boxes(tight, mask.shape, spec.input_size)[0]
    widen = rng.integers(0, spec.box_shift + 1, size=4) * np.array([-1, -1, 1, 1])
    h, w = resized
    return np.clip(box + widen, 0, [w, h, w, h]).astype(np.float32)


def draw_labels(labels: np.ndarray, k: int | None, rng: np.random.Generator) -> np.ndarray:
    """One label (k None) or min(k, n) labels without replacement, drawn from the sorted `labels`."""
    if k is None:
        return np.array([rng.choice(labels)])
    return rng.choice(labels, size=min(k, len(labels)), replace=False)


def build_item(image: np.ndarray, gts: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
               spec: ItemSpec) -> dict:
    """An item from a 2D image (H, W[, C]), its label map (H, W), its sorted labels (> 0) and `rng`.

    Keys: `image`; with `targets_per_image=None` `box` (4,), `mask` (1, m, m), `label`; with K
    `boxes` (K, 4), `masks` (K, 1, m, m), `valid` (K,), `labels` (K,) (padding rows are zeros);
    `mask_full` / `masks_full` with `full_mask`; `targets` (C, m, m) with `num_classes`.
    """
    chosen = draw_labels(labels, spec.targets_per_image, rng)
    image, gts = flip([image, gts], rng) if spec.flips else (image, gts)
    if spec.augmentation is not None:
        image, gts = spec.augmentation(image, gts, chosen, rng)
    x, resized = preprocess_image(image, spec.input_size, spec.normalization)
    targets = [gts == label for label in chosen]
    boxes = [_box(mask, spec, resized, rng) for mask in targets]
    masks = [mask_to_frame(mask, spec.input_size, spec.mask_size)[None] for mask in targets]
    item: dict = {"image": torch.from_numpy(x[0])}
    if spec.targets_per_image is None:
        item.update(box=torch.from_numpy(boxes[0]), mask=torch.from_numpy(masks[0]), label=int(chosen[0]))
        if spec.full_mask:
            item["mask_full"] = torch.from_numpy(mask_to_frame(targets[0], spec.input_size, spec.input_size)[None])
    else:  # padded in numpy, then wrapped: torch ops here would each wake torch's thread pool
        k, n = spec.targets_per_image, len(chosen)
        padded = {"boxes": np.zeros((k, 4), np.float32), "masks": np.zeros((k, 1, spec.mask_size, spec.mask_size),
                                                                          np.float32),
                  "valid": np.arange(k) < n, "labels": np.zeros(k, np.int64)}
        padded["boxes"][:n], padded["masks"][:n], padded["labels"][:n] = boxes, masks, chosen
        if spec.full_mask:
            s = spec.input_size
            padded["masks_full"] = np.zeros((k, 1, s, s), np.float32)
            padded["masks_full"][:n] = [mask_to_frame(t, s, s)[None] for t in targets]
        item.update({key: torch.from_numpy(value) for key, value in padded.items()})
    if spec.num_classes is not None:
        item["targets"] = torch.from_numpy(np.stack([mask_to_frame(gts == c, spec.input_size, spec.mask_size)
                                                     for c in range(1, spec.num_classes + 1)]))
    return item
