"""Images without labels for distillation: varied synthetic images plus the real images installed packages ship.

The targets of distillation are the teacher's own outputs, so no labels are needed; boxes are kept only to
measure agreement (the synthetic ground truth's boxes, seeded random boxes on real images).

Real images come from scikit-image's bundled samples, pydicom's bundled test files and nibabel's test volumes.
`OUTSIDE` names the images of an outside test set that distillation never trains on: pydicom's `CT_small.dcm`,
`MR_small.dcm` (and its re-encodings, the same pixels), `examples_overlay.dcm`, `J2K_pixelrep_mismatch.dcm`,
scikit-image's `retina` and `cell`.

```
write_image_set("distill-data", synthetic=600)  # train/, heldout/synthetic/, heldout/real/, outside/ (.npz 2D cases)
```
"""
from __future__ import annotations

import importlib.util
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..runtime.files import atomic_file
from .synthetic import MODALITIES, MODALITIES_3D, boxes_from_labels, make_case, relabel

# scikit-image's bundled samples (file in skimage/data, modality name used in the case name)
SKIMAGE = {"astronaut.png": "Photo", "brick.png": "Texture", "camera.png": "Photo", "chelsea.png": "Photo",
           "clock_motion.png": "Photo", "coffee.png": "Photo", "coins.png": "Photo", "color.png": "Photo",
           "grass.png": "Texture", "gravel.png": "Texture", "horse.png": "Photo", "hubble_deep_field.jpg": "Photo",
           "ihc.png": "Microscope", "microaneurysms.png": "Fundus", "moon.png": "Photo", "page.png": "Photo",
           "phantom.png": "CT", "rocket.jpg": "Photo", "text.png": "Photo", "motorcycle_left.png": "Photo",
           "logo.png": "Photo"}
# 693_J2KI.dcm is left out: it correlates 0.85 with the outside set's J2K_pixelrep_mismatch.dcm (the same CT)
PYDICOM = {"image_dfl.dcm": "OT", "JPEG2000.dcm": "NM", "examples_palette.dcm": "US"}
NIBABEL = {"anatomical.nii": "MR"}
OUTSIDE = {"skimage": {"retina.jpg": "Fundus", "cell.png": "Microscope"},
           "pydicom": {"CT_small.dcm": "CT", "MR_small.dcm": "MR", "examples_overlay.dcm": "MR",
                       "J2K_pixelrep_mismatch.dcm": "CT"}}


@dataclass
class Image2D:
    """One 2D image (uint8, (H, W) or (H, W, 3)) with boxes [x0, y0, x1, y1] for measuring agreement."""

    name: str
    image: np.ndarray
    boxes: np.ndarray


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    return Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Percentile-clipped (0.5, 99.5) to 0..255: what the task does to MR/PET intensities."""
    array = np.asarray(array, np.float32)
    lo, hi = np.percentile(array, (0.5, 99.5))
    return np.clip(np.rint((array - lo) / max(hi - lo, 1e-6) * 255), 0, 255).astype(np.uint8)


def random_boxes(shape: tuple[int, ...], count: int, seed: int) -> np.ndarray:
    """`count` seeded boxes [x0, y0, x1, y1] whose sides are 12-60% of the image's."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    sides = rng.uniform(0.12, 0.6, (count, 2)) * (w, h)
    x0 = rng.uniform(0, 1, count) * (w - sides[:, 0])
    y0 = rng.uniform(0, 1, count) * (h - sides[:, 1])
    return np.rint(np.stack([x0, y0, x0 + sides[:, 0], y0 + sides[:, 1]], 1)).astype(np.int64)


def _real(source: str, file: str, modality: str, image: np.ndarray) -> Image2D:
    image = image if image.dtype == np.uint8 else _to_uint8(image)
    seed = zlib.crc32(f"{source}/{file}".encode())
    return Image2D(f"2DBox_{modality}_{source}-{Path(file).stem}", image, random_boxes(image.shape, 3, seed))


def _skimage(files: dict[str, str]) -> Iterator[Image2D]:
    root = _package_dir("skimage")
    for file, modality in sorted(files.items()):
        path = root / "data" / file if root else None
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path and path.exists() else None
        if image is None:
            continue
        if image.ndim == 3:  # BGR(A) to RGB
            image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB)
        yield _real("skimage", file, modality, image)


def _pydicom(files: dict[str, str]) -> Iterator[Image2D]:
    if _package_dir("pydicom") is None:
        return
    import warnings

    import pydicom
    from pydicom.data import get_testdata_file

    for file, modality in sorted(files.items()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the test files are deliberately odd; their warnings say so
            path = get_testdata_file(file, download=False)
            if path is None:
                continue
            pixels = pydicom.dcmread(path).pixel_array
        yield _real("pydicom", file, modality, pixels if pixels.ndim == 2 else pixels[len(pixels) // 2])


def _nibabel(files: dict[str, str], every: int = 3) -> Iterator[Image2D]:
    root = _package_dir("nibabel")
    if root is None:
        return
    import nibabel as nib

    for file, modality in sorted(files.items()):
        volume = np.asarray(nib.load(root / "tests" / "data" / file).dataobj, np.float32)
        volume = _to_uint8(volume)
        for k in range(every, volume.shape[2] - every, every):  # axial slices, (x, y) to (rows, cols)
            plane = volume[:, :, k].T
            if plane.std() > 0:
                yield _real("nibabel", f"{Path(file).stem}-z{k}", modality, np.ascontiguousarray(plane))


def real_images() -> list[Image2D]:
    """Every real image the installed packages ship, but the outside test set."""
    return [*_skimage(SKIMAGE), *_pydicom(PYDICOM), *_nibabel(NIBABEL)]


def variants(item: Image2D, count: int, seed: int = 0) -> list[Image2D]:
    """`count` seeded variants of a real image: a crop (50-100% of each side), flips, a quarter turn, a gamma
    curve, sometimes grey or shrunk to 64-160 px (small MR and CT slices are that size). Each is a new image
    for the teacher cache, so the few real images go further than one cached embedding each."""
    made = []
    for k in range(count):
        rng = np.random.default_rng([seed, zlib.crc32(item.name.encode()), k])
        image = item.image
        h, w = image.shape[:2]
        ch, cw = (np.array([h, w]) * rng.uniform(0.5, 1.0, 2)).astype(int).clip(16)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        image = image[y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            image = image[:, ::-1]
        if rng.random() < 0.25:
            image = image[::-1]
        if rng.random() < 0.25:
            image = np.rot90(image)
        image = np.rint(255 * (image / 255.0) ** np.exp(rng.uniform(-0.5, 0.5))).astype(np.uint8)
        if image.ndim == 3 and rng.random() < 0.3:
            image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        if rng.random() < 0.3:
            scale = rng.uniform(64, 160) / max(image.shape[:2])
            if scale < 1:
                size = (max(8, round(image.shape[1] * scale)), max(8, round(image.shape[0] * scale)))
                image = cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)
        image = np.ascontiguousarray(image)
        made.append(Image2D(f"{item.name}-v{k}", image, random_boxes(image.shape, 3, int(rng.integers(2**32)))))
    return made


def outside_images() -> list[Image2D]:
    """The outside test set (never trained on): pydicom's and scikit-image's named images."""
    return [*_skimage(OUTSIDE["skimage"]), *_pydicom(OUTSIDE["pydicom"])]


def synthetic_images(count: int, seed: int = 0) -> Iterator[Image2D]:
    """`count` synthetic 2D images over every modality at varied sizes; 3D volumes give a few labelled slices."""
    rng = np.random.default_rng([seed, 2024])
    made, index = 0, 0
    while made < count:
        modality = MODALITIES[index % len(MODALITIES)]
        size = float(rng.uniform(0.3, 0.8))
        case = make_case(modality, index, seed, size, depth=0.25 if modality in MODALITIES_3D else None)
        index += 1
        planes = [(case.imgs, case.gts)] if case.kind == "2D" else _labelled_slices(case.gts, case.imgs, rng)
        for k, (image, labels) in enumerate(planes):
            labels = relabel(labels)
            if labels.max() == 0:
                continue
            yield Image2D(f"{case.name}-{k}" if case.kind == "3D" else case.name,
                          np.ascontiguousarray(image), boxes_from_labels(labels))
            made += 1
            if made == count:
                return


def _labelled_slices(gts: np.ndarray, imgs: np.ndarray, rng: np.random.Generator, count: int = 3):
    """Up to `count` random slices of a volume that hold a label, as (image, labels) pairs."""
    labelled = np.flatnonzero(gts.reshape(len(gts), -1).any(1))
    chosen = rng.choice(labelled, min(count, len(labelled)), replace=False) if len(labelled) else []
    return [(imgs[z], gts[z]) for z in sorted(chosen)]


def write_images(images: list[Image2D], folder: Path) -> list[Path]:
    """Each image as a task-format 2D case `folder/<name>.npz` (imgs, boxes), written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for item in images:
        name = item.name if item.name.startswith("2DBox_") else f"2DBox_{item.name.split('_', 1)[1]}"
        path = folder / f"{name}.npz"
        with atomic_file(path) as f:
            np.savez_compressed(f, imgs=item.image, boxes=item.boxes)
        paths.append(path)
    return paths


def split_held_out(images: list[Image2D], fraction: float, seed: int) -> tuple[list[Image2D], list[Image2D]]:
    """(train, held out): `fraction` of the images per modality, seeded, at least one held out per modality."""
    train, held = [], []
    for modality in sorted({i.name.split("_")[1] for i in images}):
        group = [i for i in images if i.name.split("_")[1] == modality]
        order = np.random.default_rng([seed, zlib.crc32(modality.encode())]).permutation(len(group))
        n = max(1, int(round(fraction * len(group)))) if len(group) > 1 else 0
        held += [group[i] for i in order[:n]]
        train += [group[i] for i in order[n:]]
    return train, held


def write_image_set(root: str | Path, synthetic: int = 600, held_out: float = 0.15, seed: int = 0,
                    real: bool = True, real_variants: int = 0) -> dict[str, list[Path]]:
    """Write train/, heldout/synthetic/, heldout/real/ and outside/ under `root`; each part's files.

    Real images are held out at twice `held_out`: there are few of them, and each source should show.
    Each real training image also gives `real_variants` variants (`variants`); held-out ones give none.
    """
    root = Path(root)
    synth_train, synth_held = split_held_out(list(synthetic_images(synthetic, seed)), held_out, seed)
    real_train, real_held = split_held_out(real_images() if real else [], held_out * 2, seed)
    real_train += [v for item in real_train for v in variants(item, real_variants, seed)]
    return {"train": write_images(synth_train + real_train, root / "train"),
            "heldout/synthetic": write_images(synth_held, root / "heldout" / "synthetic"),
            "heldout/real": write_images(real_held, root / "heldout" / "real"),
            "outside": write_images(outside_images() if real else [], root / "outside")}
