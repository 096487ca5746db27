"""Intensity windowing of raw volumes to the task's uint8 range (numpy only; training and inference share it).

The task's preprocessing (MedSAM's `pre_CT_MR.py`): CT clipped to a window (level, width) in HU, then min-max
to 0..255; MR, PET and any other modality clipped to the 0.5-99.5 percentiles of their non-zero voxels, rescaled,
zeros kept at zero; truncated to uint8.
"""
from __future__ import annotations

import numpy as np

# (level, width) in HU; soft tissue is MedSAM's CT default (pre_CT_MR.py), the others are the usual radiology windows
CT_WINDOWS = {"soft_tissue": (40, 400), "abdomen": (40, 400), "lung": (-600, 1500), "brain": (40, 80),
              "bone": (400, 1800), "liver": (60, 150), "mediastinum": (50, 350)}
PERCENTILES = (0.5, 99.5)
# `--window` names besides the CT presets: by modality, the percentile clip, or the intensities as stored
WINDOW_MODES = ("auto", "percentile", "none")


def window_image(volume: np.ndarray, level: float, width: float) -> np.ndarray:
    """CT: clip to [level - width/2, level + width/2], min-max of the clipped volume to 0..255 uint8."""
    clipped = np.clip(volume, level - width / 2, level + width / 2)
    return to_uint8(clipped)


def clip_percentiles(volume: np.ndarray) -> np.ndarray:
    """MR / PET: clip to the 0.5-99.5 percentiles of the non-zero voxels, min-max to 0..255, zeros stay 0."""
    nonzero = volume[volume > 0]
    if nonzero.size == 0:
        return np.zeros(volume.shape, np.uint8)
    lo, hi = np.percentile(nonzero, PERCENTILES)
    out = to_uint8(np.clip(volume, lo, hi))
    out[volume == 0] = 0
    return out


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Min-max to 0..255, truncated to uint8 (as MedSAM's `np.uint8(...)` does)."""
    x = x.astype(np.float64)
    lo, hi = x.min(), x.max()
    return ((x - lo) / max(hi - lo, 1e-8) * 255.0).astype(np.uint8)


def parse_window(text: str | None) -> tuple[float, float] | None:
    """A CT window: a preset name (`CT_WINDOWS`) or 'LEVEL,WIDTH'; None keeps the soft-tissue default."""
    if text is None:
        return None
    if text in CT_WINDOWS:
        return CT_WINDOWS[text]
    try:
        level, width = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--window {text!r}: expected a preset ({', '.join(CT_WINDOWS)}) or LEVEL,WIDTH") from None
    if not (width > 0 and np.isfinite(level) and np.isfinite(width)):
        raise ValueError(f"--window {text!r}: expected a finite level and a positive width")
    return level, width


def check_window(text: str) -> str:
    """`text` if it names a window `apply_window` knows (a mode, a CT preset, LEVEL,WIDTH); else ValueError."""
    if text not in WINDOW_MODES:
        try:
            parse_window(text)
        except ValueError:
            raise ValueError(f"--window {text!r}: expected {', '.join(WINDOW_MODES)}, a CT preset "
                             f"({', '.join(CT_WINDOWS)}) or LEVEL,WIDTH") from None
    return text


def apply_window(volume: np.ndarray, window: str, modality: str) -> np.ndarray:
    """The volume as the model sees it: `auto` windows CT (soft tissue) and clips any other modality's
    percentiles; `percentile` clips percentiles; `none` keeps the stored intensities; else a CT window."""
    if window == "none":
        return volume
    if window == "percentile" or (window == "auto" and modality != "CT"):
        return clip_percentiles(volume)
    return window_image(volume, *(parse_window(None if window == "auto" else window) or CT_WINDOWS["soft_tissue"]))
