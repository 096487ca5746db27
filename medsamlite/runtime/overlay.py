"""Overlay PNGs of a segmented case: the image, its boxes and each label's contour in its own colour (torch-free).

2D: the whole image. 3D: a montage of one tile per box, each its box's middle slice (the slice the propagation
starts from, `(z_max - z_min) / 2 + z_min` rounded down), showing every label's contour on that slice.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .files import atomic_file

# longest side of one 3D montage tile (slices are small; a montage of many boxes stays readable)
TILE = 256
MAX_COLUMNS = 6


def label_colour(label: int) -> tuple[int, int, int]:
    """A distinct BGR colour per label: hues spaced by the golden angle, full saturation."""
    hue = int((label * 137.508) % 180)  # OpenCV hues are 0..179
    bgr = cv2.cvtColor(np.array([[[hue, 255, 255]]], np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def _as_bgr(image: np.ndarray) -> np.ndarray:
    """An (H, W[, 1|3]) image as uint8 BGR: uint8 as it is, other dtypes scaled from their min..max."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        lo, hi = float(image.min()), float(image.max())
        image = ((image.astype(np.float64) - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)  # task images are RGB


def draw(image: np.ndarray, boxes: np.ndarray, segs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`image` (BGR uint8) with each label's contour and each box (x_min, y_min, x_max, y_max) in its colour."""
    out = image.copy()
    for label in np.unique(segs):
        if label == 0:
            continue
        contours, _ = cv2.findContours((segs == label).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, label_colour(int(label)), 1)
    for (x0, y0, x1, y1), label in zip(np.asarray(boxes, np.float64), labels):
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), label_colour(int(label)), 1)
    return out


def overlay_2d(image: np.ndarray, boxes: np.ndarray, segs: np.ndarray) -> np.ndarray:
    """The BGR overlay of a 2D case (boxes (N, 4); label i + 1 belongs to box i)."""
    return draw(_as_bgr(image), boxes, segs, np.arange(1, len(boxes) + 1))


def overlay_3d(volume: np.ndarray, boxes: np.ndarray, segs: np.ndarray) -> np.ndarray:
    """A montage of each box's middle slice (boxes (N, 6)), tiles scaled to `TILE` px on their longest side."""
    depth, height, width = volume.shape
    scale = TILE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    tiles = []
    for label, box in enumerate(np.asarray(boxes, np.float64), start=1):
        z = min(max(int((box[5] - box[2]) / 2 + box[2]), 0), depth - 1)
        # nearest-neighbour for the labels keeps them whole; contours and boxes drawn at tile scale stay 1 px
        image = cv2.resize(_as_bgr(volume[z]), size, interpolation=cv2.INTER_LINEAR)
        labels = cv2.resize(segs[z], size, interpolation=cv2.INTER_NEAREST)
        tile = draw(image, box[[0, 1, 3, 4]][None] * scale, labels, np.array([label]))
        cv2.putText(tile, f"{label}: z={z}", (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, label_colour(label), 1)
        tiles.append(tile)
    if not tiles:  # no boxes: the middle slice alone
        return cv2.resize(_as_bgr(volume[depth // 2]), size, interpolation=cv2.INTER_LINEAR)
    columns = min(len(tiles), MAX_COLUMNS)
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    return np.vstack([np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)])


def write_overlay(path: str | Path, kind: str, imgs: np.ndarray, boxes: np.ndarray, segs: np.ndarray) -> Path:
    """Write the overlay PNG of a `kind` ("2D" / "3D") case to `path` atomically."""
    picture = overlay_3d(imgs, boxes, segs) if kind == "3D" else overlay_2d(imgs, boxes, segs)
    ok, encoded = cv2.imencode(".png", picture)
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode the overlay as PNG")
    with atomic_file(path) as f:
        f.write(encoded.tobytes())
    return Path(path)
