"""Task `.npz` training cases on disk: listing, the `gts` beside an `imgs` file, validated reading (torch-free)."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..constants import find_cases
from ..runtime.npz import CaseError, check_image, kind_from_name


def case_files(cases: str | Path | Sequence[str | Path]) -> list[Path]:
    """Case files: a folder's (task layout `imgs/`, else every .npz below it) or the given list."""
    if isinstance(cases, (str, Path)):
        files = find_cases(cases, recursive=True).files
        if not files:
            raise FileNotFoundError(f"{cases}: no .npz cases found (expected imgs/*.npz or *.npz files)")
        return files
    files = [Path(f) for f in cases]
    if not files:
        raise ValueError("no case files given")
    return files


def gts_path(image_path: Path) -> Path:
    """Where a case's labels live: `../gts/<name>.npz` beside an `imgs/` folder, else the file itself."""
    if image_path.parent.name == "imgs":
        candidate = image_path.parent.parent / "gts" / image_path.name
        if candidate.exists():
            return candidate
    return image_path


def load_key(path: Path, key: str) -> np.ndarray:
    """One array of an .npz case; a `CaseError` names the file and key when it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if key not in archive.files:
                raise CaseError(f"{path}: missing key '{key}'; found keys {archive.files}")
            return archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise CaseError(f"{path}: cannot read key '{key}' ({type(error).__name__}: {error}); "
                        "expected a task .npz case") from None


def read_image(path: Path) -> np.ndarray:
    """A case's `imgs`, validated: (H, W[, 1|3]) for 2D, (D, H, W) for 3D."""
    imgs = load_key(path, "imgs")
    kind = kind_from_name(path.name) or ("3D" if imgs.ndim == 3 and imgs.shape[2] not in (1, 3) else "2D")
    return check_image(imgs, kind, str(path))


def read_labels(path: Path, image_shape: tuple[int, ...]) -> np.ndarray:
    """A case's integer label map `gts`, checked against the image's spatial shape."""
    source = gts_path(path)
    gts = load_key(source, "gts")
    spatial = image_shape if gts.ndim == 3 else image_shape[:2]
    if tuple(gts.shape) != tuple(spatial):
        raise CaseError(f"{source}: key 'gts' has shape {gts.shape}; expected {tuple(spatial)} like 'imgs' of {path}")
    if not np.issubdtype(gts.dtype, np.integer):
        raise CaseError(f"{source}: key 'gts' has dtype {gts.dtype}; expected integer labels")
    return gts
