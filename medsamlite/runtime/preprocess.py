"""Pre- and post-processing of the task's images, boxes and masks (numpy + OpenCV, no torch).

One implementation, shared by inference, training and export. It follows the LiteMedSAM
reference: resize the longest side to S with INTER_AREA, min-max normalise to [0, 1], zero-pad
bottom/right to S x S; boxes map to the S frame by truncation; logits are cropped to the resized
size, resized bilinearly (half-pixel centres) to the original size and thresholded.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..config import IMAGENET_MEAN, IMAGENET_STD

# cv2.resize handles at most this many channels in one call
_CV_MAX_CHANNELS = 512
# float images beyond this magnitude are scaled down before resizing: INTER_AREA's sums and max - min overflow
_SAFE_MAGNITUDE = 2.0 ** 64
_RANGE_FLOOR = 1e-8


def resized_shape(shape: tuple[int, int], size: int) -> tuple[int, int]:
    """(h, w) after scaling the longest side of `shape` to `size`, rounded as the reference does."""
    h, w = shape
    scale = size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_longest_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so that the longest side is `size` (cv2 INTER_AREA)."""
    h, w = resized_shape(image.shape[:2], size)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def normalize_minmax(image: np.ndarray, floor: float = _RANGE_FLOOR) -> np.ndarray:
    """Min-max to [0, 1] in float64 (as the reference), returned as float32; range floor 1e-8."""
    image = image.astype(np.float64)
    lo, hi = image.min(), image.max()
    return ((image - lo) / max(hi - lo, floor)).astype(np.float32)


def scale_to_safe_range(image: np.ndarray) -> tuple[np.ndarray, float]:
    """A float image with |values| < 1 and the power-of-two factor applied; others unchanged with factor 1.

    Only images beyond 2**64 are scaled. A power of two scales exactly, so resizing and min-max of the
    scaled copy (with the range floor scaled alike) give what exact arithmetic on the original would.
    """
    if not np.issubdtype(image.dtype, np.floating):
        return image, 1.0
    magnitude = float(np.abs(image).max(initial=0.0))
    if not magnitude <= _SAFE_MAGNITUDE:  # also catches NaN, which validation rejects before this
        exponent = int(np.frexp(magnitude)[1])
        return np.ldexp(image, -exponent), 2.0 ** -exponent
    return image, 1.0


def pad_bottom_right(image: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad the first two axes to `size` x `size` at the bottom and right."""
    h, w = image.shape[:2]
    pad = [(0, size - h), (0, size - w)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pad)


def to_three_channels(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1) grey to (H, W, 3); (H, W, 3) unchanged."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image


def preprocess_image(image: np.ndarray, size: int, normalization: str = "minmax"
                     ) -> tuple[np.ndarray, tuple[int, int]]:
    """A 2D image (H, W[, C]) to the encoder input (1, 3, S, S) float32 and the resized (h, w)."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    image, scale = scale_to_safe_range(image)
    resized = resize_longest_side(image, size)
    x = normalize_minmax(resized, _RANGE_FLOOR * scale)
    if x.ndim == 2:  # grey: resized and normalised once, then repeated (identical values, a third of the work)
        x = to_three_channels(x)
    if normalization == "imagenet":
        x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    elif normalization != "minmax":
        raise ValueError(f"unknown normalization {normalization!r}; expected 'minmax' or 'imagenet'")
    x = pad_bottom_right(x, size)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), resized.shape[:2]


def scale_boxes(boxes: np.ndarray, original_shape: tuple[int, int], size: int) -> np.ndarray:
    """Boxes (N, 4) [x0, y0, x1, y1] in original pixels to the S frame: int(coord * S / max(H, W))."""
    ratio = size / max(original_shape)
    return np.trunc(np.asarray(boxes, dtype=np.float64) * ratio).astype(np.float32)


def box_from_mask(mask: np.ndarray, shift: int = 3) -> np.ndarray | None:
    """Bounding box [x0, y0, x1, y1] of `mask > 0` widened by `shift` px (clamped), or None if empty."""
    ys, xs = np.nonzero(mask > 0)
    if xs.size == 0:
        return None
    h, w = mask.shape
    return np.array([max(0, xs.min() - shift), max(0, ys.min() - shift),
                     min(w, xs.max() + shift), min(h, ys.max() + shift)], dtype=np.float32)


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torch's bilinear (align_corners=False) source indices and weights along one axis.

    The source coordinate is formed in float64 and rounded once, as torch's fused multiply-add does;
    in float32 it would be off by ~1e-5.
    """
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum((np.float64(scale) * (np.arange(n_out) + 0.5) - 0.5).astype(np.float32), np.float32(0))
    i0 = np.minimum(src.astype(np.intp), n_in - 1)
    lam = np.minimum(src - i0.astype(np.float32), np.float32(1))
    return i0, np.minimum(i0 + 1, n_in - 1), np.float32(1) - lam, lam


def _resize_stack(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear (half-pixel, as torch align_corners=False) resize of an (N, h, w) stack.

    cv2 does the bulk; its fixed-point weights differ from torch by up to ~1e-4, which flips the
    threshold of logits near 0, so those pixels are recomputed with torch's exact formula.
    """
    out = np.empty((x.shape[0], *shape), dtype=np.float32)
    for i in range(0, x.shape[0], _CV_MAX_CHANNELS):
        chunk = np.ascontiguousarray(x[i:i + _CV_MAX_CHANNELS].transpose(1, 2, 0))
        r = cv2.resize(chunk, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        out[i:i + _CV_MAX_CHANNELS] = r.reshape(*shape, -1).transpose(2, 0, 1)
    n, yy, xx = np.nonzero(np.abs(out) < 1e-3 * max(1.0, float(np.abs(x).max(initial=0.0))))
    r0, r1, a0, a1 = (t[yy] for t in _linear_taps(x.shape[1], shape[0]))
    c0, c1, b0, b1 = (t[xx] for t in _linear_taps(x.shape[2], shape[1]))
    out[n, yy, xx] = (x[n, r0, c0] * b0 + x[n, r0, c1] * b1) * a0 + (x[n, r1, c0] * b0 + x[n, r1, c1] * b1) * a1
    return out


def postprocess_logits(low_res: np.ndarray, resized: tuple[int, int], original: tuple[int, int],
                       input_size: int) -> np.ndarray:
    """Decoder logits (N, [1,] l, l) to logits (N, H, W) of the original image.

    Logits are brought to the S frame (a no-op when l == S), cropped to the resized image and
    resized to the original shape.
    """
    x = low_res.reshape(low_res.shape[0], low_res.shape[-2], low_res.shape[-1]).astype(np.float32, copy=False)
    if x.shape[-1] != input_size:
        x = _resize_stack(x, (input_size, input_size))
    x = x[:, : resized[0], : resized[1]]
    if tuple(x.shape[1:]) == tuple(original):
        return np.ascontiguousarray(x)
    return _resize_stack(x, tuple(original))


def masks_from_logits(logits: np.ndarray) -> np.ndarray:
    """sigmoid(logits) > 0.5, computed as the reference does it (float32 sigmoid)."""
    with np.errstate(over="ignore"):
        prob = np.float32(1.0) / (np.float32(1.0) + np.exp(-logits.astype(np.float32, copy=False)))
    return prob > np.float32(0.5)
