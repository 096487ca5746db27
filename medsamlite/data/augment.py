"""Augmentations beyond flips, from MONAI: scale/shift/rotate (one affine for image and labels) and intensity jitter.

MONAI rather than albumentations: it is already a dependency of the training side (losses), its
dictionary transforms apply one affine to several keys with a mode per key (bilinear for the image,
nearest for the label map, so labels stay integers), and every random transform takes an explicit
seed (`set_random_state`), which lets the item's generator decide the draw: an item stays a pure
function of (seed, epoch, index), whatever the number of workers. Off by default: the reference
trains with flips only, and the prepared and `.npz` datasets must agree pixel for pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

_SEED_RANGE = 2 ** 31


@dataclass
class Augmentation:
    """Random affine (rotate ±`rotate_degrees`, scale ±`scale`, shift ±`shift` of the size) and intensity jitter.

    Intensity jitter is a gamma change (`gamma` range) and Gaussian noise (`noise_std` of the
    intensity range); scaling or offsetting intensities would be undone by min-max normalisation.
    An affine that pushes a chosen target out of the image is dropped for that item.
    """

    affine_prob: float = 0.5
    rotate_degrees: float = 15.0
    scale: float = 0.1
    shift: float = 0.1
    intensity_prob: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.5)
    noise_std: float = 0.02

    def _build(self, shape: tuple[int, int]) -> Any:
        from monai.transforms import RandAdjustContrast, RandAffined, RandGaussianNoise

        affine = RandAffined(keys=("image", "label"), prob=self.affine_prob,
                             rotate_range=(math.radians(self.rotate_degrees),), scale_range=(self.scale, self.scale),
                             translate_range=(self.shift * shape[0], self.shift * shape[1]),
                             mode=("bilinear", "nearest"), padding_mode="zeros")
        return affine, RandAdjustContrast(prob=self.intensity_prob, gamma=self.gamma), \
            RandGaussianNoise(prob=self.intensity_prob, std=self.noise_std)

    def __call__(self, image: np.ndarray, gts: np.ndarray, chosen: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
        """The augmented (H, W, C) float32 image in [0, 1] and (H, W) label map; seeds drawn from `rng`."""
        seeds = rng.integers(0, _SEED_RANGE, size=3)
        affine, contrast, noise = self._build(gts.shape)  # translate_range depends on the slice's size
        image = image.astype(np.float32)
        lo, hi = float(image.min()), float(image.max())
        image = (image - lo) / max(hi - lo, 1e-8)
        chw = (image[None] if image.ndim == 2 else image.transpose(2, 0, 1))
        affine.set_random_state(seed=int(seeds[0]))
        out = affine({"image": chw, "label": gts[None].astype(np.float32)})
        moved, labels = np.asarray(out["image"]), np.rint(np.asarray(out["label"])[0]).astype(gts.dtype)
        if all((labels == c).any() for c in chosen):
            chw, gts = moved, labels
        contrast.set_random_state(seed=int(seeds[1]))
        noise.set_random_state(seed=int(seeds[2]))
        chw = np.asarray(noise(contrast(np.ascontiguousarray(chw))), dtype=np.float32)
        return np.ascontiguousarray(chw.transpose(1, 2, 0) if image.ndim == 3 else chw[0]), gts
