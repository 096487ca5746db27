"""Training cases to prepare: task `.npz` files, NIfTI image/label pairs and 2D PNG/JPG image/mask pairs.

Each source case reads to an image and an integer label map: 2D (H, W[, 3]) / (H, W), 3D (D, H, W).
Task `.npz` cases are taken as stored (they are already preprocessed). NIfTI volumes get the task's
preprocessing (MedSAM's `pre_CT_MR.py`): CT clipped to a window (level, width) then rescaled to
0..255, MR and PET (and any other 3D modality) clipped to the 0.5-99.5 percentiles of their non-zero
voxels, rescaled, zeros kept at zero; uint8. PNG/JPG pairs: grey or RGB images (16-bit rescaled to
uint8), masks as labels (a 0/255 mask is label 1). Slices without a label are dropped by `prepare`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..constants import find_cases
from ..runtime.modality import parse_modality
from ..runtime.npz import CaseError
# the windowing moved to the runtime (inference needs it too); `parse_window` stays importable from here
from ..runtime.windowing import CT_WINDOWS, clip_percentiles, parse_window, to_uint8, window_image  # noqa: F401
from .cases import gts_path, read_image, read_labels

NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGE_FOLDERS = ("imgs", "images", "imagesTr")
LABEL_FOLDERS = ("gts", "labels", "labelsTr", "masks")
NNUNET_CHANNEL = "_0000"  # nnU-Net names the first image channel case_0000.nii.gz


@dataclass(frozen=True)
class SourceCase:
    """One case to prepare: its name in the prepared layout, its files, its format and modality."""

    name: str  # relative path without suffix, '/'-separated
    image: Path
    labels: Path
    format: str  # "npz", "nifti" or "image"
    modality: str


def _strip(name: str, suffixes: tuple[str, ...]) -> str | None:
    lower = name.lower()
    return next((name[: -len(s)] for s in suffixes if lower.endswith(s)), None)


def _folder(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _pairs(root: Path, suffixes: tuple[str, ...], fmt: str, modality: str | None) -> tuple[list[SourceCase], list[str]]:
    """Image/label pairs below an images folder and a labels folder of `root`, matched by relative name."""
    images, labels = _folder(root, IMAGE_FOLDERS), _folder(root, LABEL_FOLDERS)
    if images is None or labels is None:
        return [], []
    label_files: dict[str, Path] = {}
    for f in sorted(labels.rglob("*")):
        stem = _strip(f.name, suffixes)
        if stem is not None and f.is_file() and not f.name.startswith("."):
            label_files[str(PurePosixPath(*f.relative_to(labels).parts[:-1], stem))] = f
    cases, missing = [], []
    for f in sorted(images.rglob("*")):
        stem = _strip(f.name, suffixes)
        if stem is None or not f.is_file() or f.name.startswith("."):
            continue
        stem = stem[: -len(NNUNET_CHANNEL)] if fmt == "nifti" and stem.endswith(NNUNET_CHANNEL) else stem
        name = str(PurePosixPath(*f.relative_to(images).parts[:-1], stem))
        if name in label_files:
            cases.append(SourceCase(name, f, label_files[name], fmt, modality or parse_modality(stem)))
        else:
            missing.append(f"{f}: no label file named {name}.* in {labels}")
    return cases, missing


def discover(src: str | Path, modality: str | None = None) -> tuple[list[SourceCase], list[str]]:
    """Every case under `src` (task .npz, NIfTI pairs, 2D image pairs) and the entries that cannot be used.

    `modality` names the modality of every case (else it is read from the file name).
    """
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    found = find_cases(src, recursive=True)
    root = src / "imgs" if (src / "imgs").is_dir() else src.parent if src.is_file() else src
    cases = [SourceCase(str(PurePosixPath(*f.relative_to(root).with_suffix("").parts)), f, gts_path(f), "npz",
                        modality or parse_modality(f)) for f in found.files]
    problems = list(found.skipped)
    if src.is_dir():
        for suffixes, fmt in ((NIFTI_SUFFIXES, "nifti"), (IMAGE_SUFFIXES, "image")):
            more, missing = _pairs(src, suffixes, fmt, modality)
            cases += more
            problems += missing
    return cases, problems


def _integer_labels(data: np.ndarray, source: Path) -> np.ndarray:
    if np.issubdtype(data.dtype, np.floating):
        rounded = np.rint(data)
        if not np.array_equal(rounded, data) or data.min() < 0:
            raise CaseError(f"{source}: labels hold non-integer or negative values; expected an integer label map")
        data = rounded
    if data.min() < 0 or data.max() > np.iinfo(np.uint16).max:
        raise CaseError(f"{source}: labels range {data.min()}..{data.max()}; expected 0..65535")
    return data.astype(np.uint8 if data.max() <= 255 else np.uint16)


def _read_nifti(case: SourceCase, window: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    try:
        import nibabel as nib
    except ImportError:
        raise CaseError(f"{case.image}: reading NIfTI needs nibabel (pip install nibabel)") from None
    try:
        image, labels = nib.load(case.image), nib.load(case.labels)
        volume, gts = np.asarray(image.dataobj), np.asarray(labels.dataobj)
    except Exception as error:  # nibabel raises many types for a bad file; the case is named and skipped
        raise CaseError(f"{case.image}: cannot be read as NIfTI ({type(error).__name__}: {error})") from None
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3 or gts.shape[:3] != volume.shape:
        raise CaseError(f"{case.labels}: labels have shape {gts.shape}; expected {volume.shape} like the image")
    # nibabel gives (x, y, z); the task's volumes are (z, y, x) as SimpleITK's GetArrayFromImage gives them
    volume, gts = volume.transpose(2, 1, 0), gts.reshape(volume.shape).transpose(2, 1, 0)
    if case.modality == "CT":
        image8 = window_image(volume, *(window or CT_WINDOWS["soft_tissue"]))
    else:
        image8 = clip_percentiles(volume)
    return np.ascontiguousarray(image8), np.ascontiguousarray(_integer_labels(gts, case.labels))


def _read_picture(case: SourceCase) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    image = cv2.imread(str(case.image), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(case.labels), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise CaseError(f"{case.image}: cannot be read as an image; expected a PNG/JPG/BMP/TIFF file")
    if mask is None:
        raise CaseError(f"{case.labels}: cannot be read as a mask image; expected a PNG file")
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB)
    if image.dtype != np.uint8:
        image = to_uint8(image)
    if mask.ndim == 3:
        if not (mask[..., :3] == mask[..., :1]).all():
            raise CaseError(f"{case.labels}: a colour mask; expected one channel of integer labels")
        mask = mask[..., 0]
    if mask.shape != image.shape[:2]:
        raise CaseError(f"{case.labels}: mask shape {mask.shape}; expected {image.shape[:2]} like {case.image.name}")
    if set(np.unique(mask).tolist()) <= {0, 255}:  # a binary mask saved as 0/255
        mask = (mask > 0).astype(np.uint8)
    return image, _integer_labels(mask, case.labels)


def read_source(case: SourceCase, window: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The case's image and integer label map, preprocessed for its format (see the module doc)."""
    if case.format == "npz":
        image = read_image(case.image)
        return image, read_labels(case.image, image.shape)
    if case.format == "nifti":
        return _read_nifti(case, window)
    return _read_picture(case)
