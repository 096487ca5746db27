"""Image meta-features and a nearest-centroid modality classifier on them (numpy only).

For names that do not say their modality. Features: size, depth, channels, intensity statistics,
histogram entropy and the fraction of dark pixels — cheap, and distinct across the task's
modalities (CT volumes are large 3D int ranges, fundus/dermoscopy are RGB with dark borders, ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

FEATURES = ("log_height", "log_width", "log_depth", "channels", "mean", "std", "p01", "p99",
            "entropy", "dark_fraction", "range_log")


def meta_features(image: np.ndarray) -> np.ndarray:
    """The `FEATURES` of an image (H, W), (H, W, C) or volume (D, H, W); intensities scaled to [0, 1]."""
    image = np.asarray(image)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3)):
        depth, (h, w), channels = 1, image.shape[:2], (image.shape[2] if image.ndim == 3 else 1)
    elif image.ndim == 3:
        depth, (h, w), channels = image.shape[0], image.shape[1:], 1
    else:
        raise ValueError(f"image of shape {image.shape}: expected (H, W), (H, W, C) or (D, H, W)")
    values = image.astype(np.float64).ravel()
    if values.size > 1_000_000:  # a fixed-stride subsample keeps large volumes cheap and deterministic
        values = values[:: values.size // 1_000_000]
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    hist = np.bincount(np.minimum((scaled * 256).astype(np.int64), 255), minlength=256) / scaled.size
    nz = hist[hist > 0]
    return np.array([np.log(h), np.log(w), np.log(depth), channels, scaled.mean(), scaled.std(),
                     np.quantile(scaled, 0.01), np.quantile(scaled, 0.99), float(-(nz * np.log2(nz)).sum()),
                     float((scaled < 0.05).mean()), np.log1p(hi - lo)], dtype=np.float64)


@dataclass
class MetaClassifier:
    """Nearest class centroid on z-scored meta-features."""

    classes: list[str]
    centroids: np.ndarray  # (K, F), z-scored
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, images: Sequence[np.ndarray], modalities: Sequence[str]) -> "MetaClassifier":
        if len(images) != len(modalities) or not images:
            raise ValueError(f"fit needs one modality per image, got {len(images)} images, {len(modalities)} labels")
        x = np.stack([meta_features(im) for im in images])
        mean, scale = x.mean(0), x.std(0)
        scale[scale == 0] = 1.0
        z = (x - mean) / scale
        classes = sorted(set(modalities))
        labels = np.array(modalities)
        return cls(classes, np.stack([z[labels == c].mean(0) for c in classes]), mean, scale)

    def predict(self, image: np.ndarray) -> str:
        z = (meta_features(image) - self.mean) / self.scale
        return self.classes[int(np.argmin(((self.centroids - z) ** 2).sum(1)))]

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(FEATURES), "classes": self.classes, "centroids": self.centroids.tolist(),
                "mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MetaClassifier":
        if list(d.get("features", [])) != list(FEATURES):
            raise ValueError(f"classifier features {d.get('features')} differ from this version's {list(FEATURES)}")
        return cls(list(d["classes"]), np.asarray(d["centroids"]), np.asarray(d["mean"]), np.asarray(d["scale"]))
