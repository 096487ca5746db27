"""Seeded synthetic cases in the task's format, with ground truth, for every modality family (numpy + cv2).

Each case mimics what makes box-prompted segmentation hard in its modality: structures that touch and
overlap the neighbours' boxes, low contrast between a lesion and its organ, partial volume (blur across
boundaries and thick slices), noise of the modality's kind (Gaussian, speckle, Poisson-like), bias fields,
vignetting and distractors (hair, vessels, highlights). They are not anatomy: they exercise the pipeline
and let the benchmark rank models, and a real data set should be used for published accuracy.

```
write_dataset("synthetic", size=0.5)   # synthetic/imgs/*.npz (imgs, boxes, spacing), synthetic/gts/*.npz (gts, spacing)
case = make_case("CT", index=0, size=0.25)
```
Names follow the task: `3DBox_<Modality>_<id>.npz` and `2DBox_<Modality>_<id>.npz`; boxes are the ground
truth's bounding boxes, one per label 1..N ([x0, y0, z0, x1, y1, z1] in 3D, [x0, y0, x1, y1] in 2D).
`size` scales every image side (1.0 is a realistic size; tests use 0.1-0.25), `depth` the slice count.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

MODALITIES_3D = ("CT", "MR", "PET")
MODALITIES_2D = ("US", "X-Ray", "Endoscopy", "Dermoscopy", "Fundus", "Microscope")
MODALITIES = MODALITIES_3D + MODALITIES_2D


@dataclass
class SyntheticCase:
    """One case: `imgs` uint8 ((D, H, W) or (H, W, 3)), `boxes` int64, `gts` labels 1..N, `spacing` (z, y, x) mm, the arrays' axis order."""

    name: str
    imgs: np.ndarray
    boxes: np.ndarray
    gts: np.ndarray
    spacing: np.ndarray

    @property
    def kind(self) -> str:
        return "3D" if self.name.startswith("3DBox_") else "2D"


# shared primitives ---------------------------------------------------------------------------------


def _scaled(n: int, size: float, minimum: int = 16) -> int:
    return max(minimum, int(round(n * size)))


def smooth_field(rng: np.random.Generator, shape: Sequence[int], cells: int = 4) -> np.ndarray:
    """Smooth random field in [-1, 1] of `shape` (2D or 3D): coarse noise, interpolated up."""
    shape = tuple(int(s) for s in shape)
    coarse = rng.uniform(-1, 1, tuple(min(s, cells + 1) for s in shape)).astype(np.float32)
    plane = lambda a: cv2.resize(a, (shape[-1], shape[-2]), interpolation=cv2.INTER_CUBIC)
    if len(shape) == 2:
        return plane(coarse)
    planes = np.stack([plane(c) for c in coarse])
    z = np.linspace(0, len(planes) - 1, shape[0])
    lo = np.floor(z).astype(int)
    hi = np.minimum(lo + 1, len(planes) - 1)
    w = (z - lo)[:, None, None].astype(np.float32)
    return planes[lo] * (1 - w) + planes[hi] * w


def _grid(shape: Sequence[int], spacing: Sequence[float]) -> list[np.ndarray]:
    """Physical coordinates (mm) of every voxel, one open grid per axis."""
    return [(np.arange(n, dtype=np.float32) * s).reshape([-1 if i == a else 1 for i in range(len(shape))])
            for a, (n, s) in enumerate(zip(shape, spacing))]


def blob(grid: list[np.ndarray], center: Sequence[float], radii: Sequence[float], wobble: np.ndarray,
         amount: float = 0.25) -> np.ndarray:
    """An ellipsoid (mm) with a boundary deformed by a smooth field: organ- and lesion-like shapes."""
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii))
    return r2 < 1.0 + amount * wobble


def _extents(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-label bounding box corners, inclusive, indexed by label value: (lo, hi), each (max + 1, ndim)."""
    idx = np.nonzero(labels)
    values = labels[idx].astype(np.int64)
    n = int(labels.max()) + 1
    lo = np.full((n, labels.ndim), np.iinfo(np.int64).max)
    hi = np.full((n, labels.ndim), -1)
    for axis, coords in enumerate(idx):
        np.minimum.at(lo[:, axis], values, coords)
        np.maximum.at(hi[:, axis], values, coords)
    return lo, hi


def boxes_from_labels(gts: np.ndarray) -> np.ndarray:
    """Bounding box of every label 1..max: [x0, y0, x1, y1] for (H, W), [x0, y0, z0, x1, y1, z1] for (D, H, W)."""
    lo, hi = _extents(gts)
    order = [1, 0] if gts.ndim == 2 else [2, 1, 0]  # (y, x) / (z, y, x) -> x first
    return np.concatenate([lo[1:, order], hi[1:, order]], axis=1).astype(np.int64)


def relabel(labels: np.ndarray, min_side: int = 3) -> np.ndarray:
    """Labels renumbered 1..N in order, dropping those painted over or narrower than `min_side` pixels in-plane.

    The task's boxes need x_min < x_max and y_min < y_max; slivers left by overlapping structures are dropped.
    """
    lo, hi = _extents(labels)
    side = (hi - lo + 1)[:, -2:].min(axis=1)
    keep = np.flatnonzero(side >= min_side)
    keep = keep[keep > 0]
    lut = np.zeros(len(lo), np.uint16 if len(keep) > 255 else np.uint8)
    lut[keep] = np.arange(1, len(keep) + 1)
    return lut[labels]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0 else image


def _neighbour_center(rng: np.random.Generator, center: np.ndarray, r_a: float, r_b: float) -> np.ndarray:
    """A centre at which a blob of radius r_b touches (slightly overlaps) one of radius r_a at `center`."""
    direction = rng.normal(size=len(center))
    direction[0] *= 0.3  # mostly in-plane: neighbours share slices, so each box holds part of the other
    direction /= np.linalg.norm(direction)
    return center + direction * (r_a + r_b) * 0.85


# 3D --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Volume:
    """Geometry and contrast of a 3D modality; intensities are fractions of the windowed uint8 range."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    body: float
    organs: tuple[float, float]
    lesion_contrast: float
    noise: float
    psf: float  # in-plane blur (pixels): partial volume / scanner resolution
    bias: float = 0.0  # MR coil inhomogeneity
    hot_lesions: bool = False  # PET: lesions far brighter than everything else


VOLUMES = {
    "CT": _Volume((24, 192, 192), (3.0, 0.9, 0.9), 0.45, (0.3, 0.75), 0.08, 0.05, 0.8),
    "MR": _Volume((16, 160, 176), (5.0, 1.2, 1.2), 0.3, (0.2, 0.8), 0.1, 0.04, 1.0, bias=0.25),
    "PET": _Volume((24, 96, 96), (3.0, 4.0, 4.0), 0.12, (0.15, 0.35), 0.5, 0.06, 1.5, hot_lesions=True),
}


def synth_volume(rng: np.random.Generator, modality: str, size: float = 1.0, depth: float | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(imgs (D, H, W) uint8, gts, spacing): a body with touching organs and low-contrast lesions inside them.

    `size` scales the in-plane sides, `depth` (default: `size`) the slice count; spacing stays the modality's.
    """
    v = VOLUMES[modality]
    shape = (_scaled(v.shape[0], size if depth is None else depth, 4),) + tuple(_scaled(n, size) for n in v.shape[1:])
    spacing = np.round(np.array(v.spacing) * rng.uniform(0.9, 1.1, 3), 3)  # a smaller size is a smaller field of view
    grid = _grid(shape, spacing)
    extent = np.array(shape) * spacing
    wobble = smooth_field(rng, shape)
    body = blob(grid, extent / 2, extent * [0.9, 0.46, 0.4], wobble, 0.1)
    image = np.where(body, v.body, 0.0).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    center = extent / 2 + rng.uniform(-0.05, 0.05, 3) * extent
    radius = float(extent[1:].min()) * rng.uniform(0.12, 0.16)
    organs = []
    for k in range(int(rng.integers(3, 5))):
        r = radius * rng.uniform(0.6, 1.1)
        if organs:  # each organ touches one placed before it
            prev_c, prev_r = organs[int(rng.integers(len(organs)))]
            c = _neighbour_center(rng, prev_c, prev_r, r)
        else:
            c = center
        radii = np.array([max(r, 2.5 * spacing[0]) * rng.uniform(0.8, 1.3), r * rng.uniform(0.8, 1.2), r])
        organs.append((c, r))
        mask = blob(grid, c, radii, smooth_field(rng, shape), 0.3) & body
        labels[mask] = k + 1
        image[mask] = rng.uniform(*v.organs)
    for _ in range(int(rng.integers(1, 3))):
        host_c, host_r = organs[int(rng.integers(len(organs)))]
        r = host_r * rng.uniform(0.25, 0.45)
        c = host_c + rng.normal(size=3) * host_r * 0.4 * np.array([0.3, 1, 1])
        radii = np.array([max(r, 1.6 * spacing[0]), r, r * rng.uniform(0.7, 1.2)])
        mask = blob(grid, c, radii, smooth_field(rng, shape), 0.2) & body
        host = float(np.median(image[mask])) if mask.any() else v.body
        image[mask] = min(1.0, host * 2.5 + 0.3) if v.hot_lesions else host + rng.choice([-1, 1]) * v.lesion_contrast
        labels[mask] = labels.max() + 1
    image = image * (1 + v.bias * smooth_field(rng, shape, cells=2))
    image = np.stack([_blur(s, v.psf) for s in image])
    image[1:-1] = 0.25 * image[:-2] + 0.5 * image[1:-1] + 0.25 * image[2:]  # thick slices
    noise = rng.normal(0, v.noise, shape).astype(np.float32)
    image = image + noise * (np.sqrt(np.maximum(image, 0) + 0.05) if v.hot_lesions else 1.0)
    return _to_uint8(image), relabel(labels), spacing


# 2D ---------------------------------------------------------------------------------------------------

def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def _ellipse(shape: tuple[int, int], center: Sequence[float], axes: Sequence[float], angle: float,
             rng: np.random.Generator, wobble: float = 0.2) -> np.ndarray:
    """A filled, boundary-deformed ellipse mask (pixels)."""
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    t = np.deg2rad(angle)
    dx, dy = xx - center[0], yy - center[1]
    u, w = (dx * np.cos(t) + dy * np.sin(t)) / axes[0], (-dx * np.sin(t) + dy * np.cos(t)) / axes[1]
    return u ** 2 + w ** 2 < 1 + wobble * smooth_field(rng, shape, cells=5)


def synth_ultrasound(rng: np.random.Generator, size: float) -> tuple[np.ndarray, np.ndarray]:
    """A fan-shaped B-mode image with speckle: an organ with a hypoechoic lesion on its edge and a cyst."""
    h, w = _scaled(480, size), _scaled(560, size)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    apex, r_max = (w / 2, -0.1 * h), 1.1 * h
    r, theta = np.hypot(xx - apex[0], yy - apex[1]), np.arctan2(xx - apex[0], yy - apex[1])
    fan = (r < r_max) & (np.abs(theta) < 0.6)
    tissue = 0.45 + 0.1 * smooth_field(rng, (h, w), 6)
    labels = np.zeros((h, w), np.uint8)
    organ = _ellipse((h, w), (w * rng.uniform(0.4, 0.6), h * 0.55), (w * 0.22, h * 0.2), rng.uniform(-30, 30), rng)
    labels[organ], tissue[organ] = 1, 0.6
    lesion = _ellipse((h, w), (w * 0.5 + w * 0.18, h * 0.5), (w * 0.08, h * 0.1), rng.uniform(0, 180), rng, 0.3)
    labels[lesion], tissue[lesion] = 2, 0.38
    cyst = _ellipse((h, w), (w * 0.35, h * 0.3), (w * 0.06, h * 0.05), rng.uniform(0, 180), rng, 0.1)
    labels[cyst], tissue[cyst] = 3, 0.08
    speckle = rng.rayleigh(0.8, (h, w)).astype(np.float32)
    image = _blur(tissue, 1.0) * _blur(speckle, 0.7) * (1 - 0.4 * r / r_max)
    return _rgb(_to_uint8(np.where(fan, image, 0))), relabel(np.where(fan, labels, 0))


def synth_xray(rng: np.random.Generator, size: float) -> tuple[np.ndarray, np.ndarray]:
    """A chest-like radiograph: two lungs, the heart overlapping the left lung, and a stack of touching vertebrae."""
    h, w = _scaled(512, size), _scaled(640, size)
    image = 0.55 + 0.05 * smooth_field(rng, (h, w), 4)
    labels = np.zeros((h, w), np.uint8)
    for k, cx in enumerate((0.32, 0.68), start=1):
        lung = _ellipse((h, w), (w * cx, h * 0.45), (w * 0.13, h * 0.32), rng.uniform(-8, 8), rng, 0.1)
        labels[lung], image[lung] = k, 0.25 + 0.05 * k
    heart = _ellipse((h, w), (w * 0.56, h * 0.62), (w * 0.12, h * 0.15), 20, rng, 0.1)
    labels[heart], image[heart] = 3, 0.5
    top, n = h * 0.08, int(rng.integers(6, 10))
    step = h * 0.8 / n
    for i in range(n):  # vertebrae: each box also holds its neighbours' end plates
        y0, y1 = int(top + i * step), int(top + (i + 1) * step) - 1
        x0 = int(w * 0.47 + rng.normal(0, 2 * size))
        labels[y0:y1, x0:x0 + int(w * 0.06)] = 4 + i
        image[y0:y1, x0:x0 + int(w * 0.06)] = 0.7 + 0.05 * rng.uniform(-1, 1)
    image = _blur(image, 2.0) + rng.normal(0, 0.03, (h, w))
    return _rgb(_to_uint8(image)), relabel(labels)


def _vignette(h: int, w: int, strength: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    return 1 - strength * (((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2) / 2


def synth_endoscopy(rng: np.random.Generator, size: float) -> tuple[np.ndarray, np.ndarray]:
    """Pink mucosa with folds and specular highlights: a low-contrast polyp beside an instrument."""
    h, w = _scaled(480, size), _scaled(560, size)
    base = np.array([0.75, 0.35, 0.3], np.float32)
    folds = 0.12 * smooth_field(rng, (h, w), 8)
    image = base * (1 + folds[..., None])
    labels = np.zeros((h, w), np.uint8)
    polyp = _ellipse((h, w), (w * rng.uniform(0.35, 0.55), h * rng.uniform(0.4, 0.6)), (w * 0.12, h * 0.1),
                     rng.uniform(0, 180), rng, 0.25)
    labels[polyp] = 1
    image[polyp] = image[polyp] * np.array([1.05, 1.15, 1.1], np.float32)
    tool = np.zeros((h, w), np.uint8)
    cv2.line(tool, (w, int(h * rng.uniform(0.6, 0.9))), (int(w * 0.62), int(h * 0.55)), 1, max(3, int(0.07 * w)))
    tool = tool.astype(bool)
    labels[tool], image[tool] = 2, 0.55
    image = image * _vignette(h, w, 0.9)[..., None]
    spots = rng.random((h, w)) > 0.99995
    image[_blur(spots.astype(np.float32), 3.0) > 0.005] = 1.0
    image = image + rng.normal(0, 0.02, image.shape)
    return _to_uint8(image), relabel(labels)


def synth_dermoscopy(rng: np.random.Generator, size: float) -> tuple[np.ndarray, np.ndarray]:
    """Skin with an irregular, unevenly pigmented lesion crossed by hairs."""
    h, w = _scaled(450, size), _scaled(600, size)
    skin = np.array([0.85, 0.65, 0.55], np.float32) * (1 + 0.05 * smooth_field(rng, (h, w), 6))[..., None]
    labels = np.zeros((h, w), np.uint8)
    lesion = _ellipse((h, w), (w * 0.5, h * 0.5), (w * 0.25, h * 0.28), rng.uniform(0, 180), rng, 0.45)
    labels[lesion] = 1
    pigment = 0.45 + 0.2 * smooth_field(rng, (h, w), 5)
    skin[lesion] = skin[lesion] * pigment[lesion][:, None]
    hair = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(5, 12))):
        p0 = (int(rng.integers(w)), int(rng.integers(h)))
        p1 = (int(rng.integers(w)), int(rng.integers(h)))
        cv2.line(hair, p0, p1, 1, max(1, int(2 * size)))
    skin[hair.astype(bool)] = 0.15
    image = _blur(skin, 1.0) * _vignette(h, w, 0.6)[..., None] + rng.normal(0, 0.015, skin.shape)
    return _to_uint8(image), relabel(labels)


def synth_fundus(rng: np.random.Generator, size: float) -> tuple[np.ndarray, np.ndarray]:
    """A retina with vessels: the optic disc and the cup nested inside it (the cup's box lies inside the disc)."""
    s = _scaled(512, size)
    yy, xx = np.mgrid[:s, :s].astype(np.float32)
    retina = np.hypot(xx - s / 2, yy - s / 2) < 0.47 * s
    image = np.array([0.7, 0.3, 0.1], np.float32) * (1 + 0.1 * smooth_field(rng, (s, s), 5))[..., None]
    labels = np.zeros((s, s), np.uint8)
    centre = (s * rng.uniform(0.6, 0.7), s * rng.uniform(0.45, 0.55))
    disc = _ellipse((s, s), centre, (s * 0.08, s * 0.09), 0, rng, 0.08)
    labels[disc], image[disc] = 1, np.array([0.9, 0.65, 0.35], np.float32)
    cup = _ellipse((s, s), centre, (s * 0.045, s * 0.05), 0, rng, 0.15) & disc
    labels[cup], image[cup] = 2, np.array([0.95, 0.78, 0.5], np.float32)
    vessels = np.zeros((s, s), np.uint8)
    for _ in range(8):  # vessels leave the disc and cross both boxes
        angle = rng.uniform(0, 2 * np.pi)
        end = (int(centre[0] + np.cos(angle) * s * 0.5), int(centre[1] + np.sin(angle) * s * 0.5))
        cv2.line(vessels, (int(centre[0]), int(centre[1])), end, 1, max(1, int(4 * size)))
    image[vessels.astype(bool)] *= 0.55
    image = _blur(image, 1.2) * retina[..., None] + rng.normal(0, 0.015, image.shape) * retina[..., None]
    return _to_uint8(image), relabel(labels)


def synth_microscopy(rng: np.random.Generator, size: float) -> tuple[np.ndarray, np.ndarray]:
    """Stained nuclei, many and clustered (about 250 at size 1): touching cells share each other's boxes."""
    s = _scaled(1024, size, 48)
    count = max(3, int(250 * size ** 2))
    radius = 24.0 * max(size, 0.25) ** 0.5
    image = np.array([0.92, 0.85, 0.9], np.float32) * (1 + 0.03 * smooth_field(rng, (s, s), 6))[..., None]
    labels = np.zeros((s, s), np.uint16)
    centres = rng.uniform(radius, s - radius, (count, 2))
    clusters = rng.uniform(radius, s - radius, (max(1, count // 25), 2))
    near = rng.random(count) < 0.6  # most cells sit in clusters
    members = int(near.sum())
    centres[near] = clusters[rng.integers(len(clusters), size=members)] + rng.normal(0, 2.5 * radius, (members, 2))
    centres = np.clip(centres, 2, s - 3)
    stain = np.array([0.45, 0.25, 0.6], np.float32) * rng.uniform(0.8, 1.3, (count + 1, 1)).astype(np.float32)
    for k, (cx, cy) in enumerate(centres, start=1):  # later cells overlap earlier ones
        axes = (max(1, int(radius * rng.uniform(0.6, 1.1))), max(1, int(radius * rng.uniform(0.4, 0.8))))
        cv2.ellipse(labels, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, k, -1)
    cells = labels > 0
    image[cells] = stain[labels[cells]]
    image = _blur(image, 1.0) + rng.normal(0, 0.03, image.shape)
    return _to_uint8(image), relabel(labels)


GENERATORS_2D: dict[str, Callable[[np.random.Generator, float], tuple[np.ndarray, np.ndarray]]] = {
    "US": synth_ultrasound, "X-Ray": synth_xray, "Endoscopy": synth_endoscopy,
    "Dermoscopy": synth_dermoscopy, "Fundus": synth_fundus, "Microscope": synth_microscopy,
}


# cases and data sets -----------------------------------------------------------------------------------

def case_name(modality: str, index: int) -> str:
    prefix = "3DBox" if modality in MODALITIES_3D else "2DBox"
    return f"{prefix}_{modality}_{index:04d}"


def make_case(modality: str, index: int = 0, seed: int = 0, size: float = 1.0,
              depth: float | None = None) -> SyntheticCase:
    """One seeded case of `modality` (one of `MODALITIES`); the same arguments give the same arrays.

    `size` scales image sides; `depth` scales the slice count of 3D cases (default: `size`; at least 4 slices).
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality {modality!r}; expected one of {MODALITIES}")
    for name, value in (("size", size), ("depth", 1.0 if depth is None else depth)):
        if not value > 0:
            raise ValueError(f"{name} {value}; expected a positive scale (1.0 = realistic size)")
    rng = np.random.default_rng([seed, index, zlib.crc32(modality.encode())])
    if modality in MODALITIES_3D:
        imgs, gts, spacing = synth_volume(rng, modality, size, depth)
    else:
        imgs, gts = GENERATORS_2D[modality](rng, size)
        spacing = np.ones(2, np.float64)
    return SyntheticCase(case_name(modality, index), imgs, boxes_from_labels(gts), gts, spacing)


def write_case(case: SyntheticCase, root: str | Path) -> tuple[Path, Path]:
    """Write `imgs/<name>.npz` (imgs, boxes, spacing) and `gts/<name>.npz` (gts, spacing) under `root`.

    The files store spacing as the task's do, (x, y, z) as SimpleITK's `GetSpacing()` gives it: the reverse
    of the arrays' (z, y, x) axis order that `case.spacing` holds.
    """
    root = Path(root)
    paths = root / "imgs" / f"{case.name}.npz", root / "gts" / f"{case.name}.npz"
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    stored = case.spacing[::-1]
    np.savez_compressed(paths[0], imgs=case.imgs, boxes=case.boxes, spacing=stored)
    np.savez_compressed(paths[1], gts=case.gts, spacing=stored)
    return paths


def write_dataset(root: str | Path, modalities: Sequence[str] = MODALITIES, per_modality: int = 1,
                  size: float = 1.0, seed: int = 0, depth: float | None = None) -> list[Path]:
    """Write `per_modality` cases of each modality under `root`; returns the image files."""
    return [write_case(make_case(m, i, seed, size, depth), root)[0] for m in modalities for i in range(per_modality)]
