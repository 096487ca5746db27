"""The task's metrics: Dice (DSC) and normalised surface Dice (NSD), per label and per case.

NSD is DeepMind's surface Dice (`surface-distance`: `compute_surface_distances` +
`compute_surface_dice_at_tolerance`): boundary elements of each mask are weighted by their length (2D) or
area (3D), read from a 2x2(x2) neighbour-code table, and counted as overlapping when the closest point on
the other boundary lies within `tolerance` mm. The boundary normals per neighbour code are DeepMind's table
(`surface_normals.npy`, in eighths of a voxel face); the distances are exact Euclidean distances up to the
tolerance, computed here in numpy so that scoring needs neither scipy nor torch. Everything is float64.

Conventions (docs/metrics.md): both masks empty -> 1, exactly one empty -> 0, for DSC and NSD alike (the
reference returns NaN for both-empty); 2D cases are scored as (H, W, 1) volumes with spacing (1, 1, 1);
labels are 1..gt.max(); the task reports NSD = 0 for a case whose mean DSC is <= 0.2.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

TOLERANCE = 2.0  # mm, the task's NSD tolerance
ZERO_NSD_BELOW_DSC = 0.2  # the task's driver reports NSD 0 when the case DSC is <= this


def _binary(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim not in (2, 3):
        raise ValueError(f"{name} has shape {mask.shape}; expected a 2D (H, W) or 3D (D, H, W) mask")
    return mask.astype(bool, copy=False)


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = _binary(pred, "pred"), _binary(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred has shape {pred.shape} but gt has shape {gt.shape}; expected equal shapes")
    return pred, gt


def dsc(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient of two binary masks; 1 when both are empty."""
    pred, gt = _pair(pred, gt)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(gt))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(pred & gt)) / total


_KERNELS = {2: np.array([[8, 4], [2, 1]]), 3: np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])}


@lru_cache(maxsize=32)
def _measure_table(spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(code -> boundary length/area table, 2x2(x2) encoding kernel) for a spacing: DeepMind's tables."""
    if len(spacing) == 2:
        first, second = spacing
        diag = 0.5 * float(np.hypot(first, second))
        table = np.full(16, diag)  # a corner cut: half the pixel's diagonal
        table[[0, 15]] = 0.0
        table[[0b0011, 0b1100]] = second
        table[[0b0101, 0b1010]] = first
        table[[0b0110, 0b1001]] = 2 * diag  # two opposite corners
        return table, _KERNELS[2]
    normals = np.load(Path(__file__).with_name("surface_normals.npy")).astype(np.float64) / 8  # (256, 4, 3)
    faces = np.array([spacing[1] * spacing[2], spacing[0] * spacing[2], spacing[0] * spacing[1]])
    return np.linalg.norm(normals * faces, axis=-1).sum(-1), _KERNELS[3]


def _neighbour_codes(mask: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Code of every 2x2(x2) neighbourhood, i.e. of every voxel corner (the 'full' correlation)."""
    padded = np.pad(mask.astype(np.int64), 1)
    codes = np.zeros(tuple(s - 1 for s in padded.shape), np.int64)
    for offset in np.ndindex(*kernel.shape):
        codes += kernel[offset] * padded[tuple(slice(o, o + n) for o, n in zip(offset, codes.shape))]
    return codes


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], limit: float = np.inf
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """DeepMind's boundary elements: (distances gt->pred, distances pred->gt, areas of gt's, areas of pred's).

    Distances are exact up to `limit` mm and inf beyond (NSD needs them only up to its tolerance); a mask
    with no boundary gives empty arrays; distances to a missing boundary are inf.
    """
    pred, gt = _pair(pred, gt)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != gt.ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} values; expected {gt.ndim} for {gt.ndim}D masks")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing {spacing}; expected positive finite values")
    union = pred | gt
    if not union.any():
        empty = np.zeros(0)
        return empty, empty, empty, empty
    # crop to the union's bounding box: both grids stay aligned and distances are translation invariant
    box = tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(union))
    table, kernel = _measure_table(spacing)
    full = len(table) - 1
    codes = [_neighbour_codes(m[box], kernel) for m in (gt, pred)]
    borders = [(c != 0) & (c != full) for c in codes]
    distances = [_distance_to(b, spacing, limit) for b in borders]
    return (distances[1][borders[0]], distances[0][borders[1]],
            table[codes[0][borders[0]]], table[codes[1][borders[1]]])


def _distance_to(border: np.ndarray, spacing: tuple[float, ...], limit: float = np.inf) -> np.ndarray:
    """Distance in mm of every grid point to the nearest border point: exact up to `limit`, inf beyond.

    Separable squared distances (one minimum over shifts per axis, summed in axis order as scipy's
    `distance_transform_edt` does); a point within `limit` has its nearest border point within
    `limit / spacing` steps along each axis, so only those shifts are needed.
    """
    squared = np.where(border, 0.0, np.inf)
    if not border.any():
        return squared
    for axis, step in enumerate(spacing):
        reach = min(border.shape[axis] - 1, int(np.ceil(limit / step)) if np.isfinite(limit) else border.shape[axis])
        moved = np.moveaxis(squared, axis, 0)
        best = moved.copy()
        for k in range(1, reach + 1):
            cost = (k * step) ** 2
            np.minimum(best[k:], moved[:-k] + cost, out=best[k:])
            np.minimum(best[:-k], moved[k:] + cost, out=best[:-k])
        squared = np.moveaxis(best, 0, axis)
    distances = np.sqrt(squared)
    distances[distances > limit] = np.inf
    return distances


def nsd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance: float = TOLERANCE) -> float:
    """Normalised surface Dice at `tolerance` mm (DeepMind's definition); 1 when both masks are empty."""
    if not tolerance >= 0:
        raise ValueError(f"tolerance {tolerance}; expected a value >= 0 (mm)")
    gt_to_pred, pred_to_gt, gt_areas, pred_areas = surface_distances(pred, gt, spacing, tolerance)
    total = gt_areas.sum() + pred_areas.sum()
    if total == 0:
        return 1.0
    return float((gt_areas[gt_to_pred <= tolerance].sum() + pred_areas[pred_to_gt <= tolerance].sum()) / total)


@dataclass
class CaseScore:
    """Per-label and mean DSC/NSD of one case; `nsd_zeroed` tells whether the low-DSC rule set NSD to 0."""

    labels: list[int]
    dsc: list[float]
    nsd: list[float]
    mean_dsc: float
    mean_nsd: float
    nsd_zeroed: bool = False


def as_volume(segs: np.ndarray, gts: np.ndarray, spacing: Sequence[float] | None
              ) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """The task's scoring frame: a 2D pair becomes (H, W, 1) with spacing (1, 1, 1); 3D keeps its spacing."""
    segs, gts = np.asarray(segs), np.asarray(gts)
    if segs.shape != gts.shape:
        raise ValueError(f"segs has shape {segs.shape} but gts has shape {gts.shape}; expected equal shapes")
    if gts.ndim == 2:
        return segs[..., None], gts[..., None], (1.0, 1.0, 1.0)
    if gts.ndim != 3:
        raise ValueError(f"gts has shape {gts.shape}; expected (H, W) or (D, H, W)")
    if spacing is None or len(spacing) != 3:
        raise ValueError(f"spacing {spacing}; expected 3 values for a 3D case (as the task stores it, passed unchanged)")
    return segs, gts, tuple(float(s) for s in spacing)


def evaluate_case(segs: np.ndarray, gts: np.ndarray, spacing: Sequence[float] | None = None,
                  zero_nsd_below_dsc: float | None = ZERO_NSD_BELOW_DSC, tolerance: float = TOLERANCE) -> CaseScore:
    """DSC and NSD of labels 1..gts.max() and their means, as the task scores a case.

    `spacing` is ignored for 2D label maps (scored with (1, 1, 1)). With `zero_nsd_below_dsc` set (the task's
    0.2), every NSD is reported as 0 when the mean DSC is <= it; None reports the raw values.
    """
    segs, gts, spacing = as_volume(segs, gts, spacing)
    labels = list(range(1, int(gts.max()) + 1))
    if not labels:
        raise ValueError("gts has no foreground label; expected labels 1..N")
    dscs = [dsc(segs == label, gts == label) for label in labels]
    mean_dsc = float(np.mean(dscs))
    zeroed = zero_nsd_below_dsc is not None and mean_dsc <= zero_nsd_below_dsc
    nsds = [0.0] * len(labels) if zeroed else [nsd(segs == label, gts == label, spacing, tolerance)
                                                for label in labels]
    return CaseScore(labels, dscs, nsds, mean_dsc, float(np.mean(nsds)), zeroed)
