"""Scoring segmentation files against ground truth as the task's evaluation does (torch-free).

A case is `<name>.npz` with key `segs` in the segmentation folder and `<name>.npz` with key `gts` (3D also
`spacing`, used as stored) in the ground-truth folder; DSC and NSD per label follow `metrics.evaluate_case`
(NSD tolerance 2 mm, NSD reported 0 when the case's mean DSC is <= 0.2). A NIfTI segmentation (`.nii`,
`.nii.gz`) is scored against the NIfTI of the same name, on the array as stored, with the spacing of the ground
truth's header (pixdim along i, j, k); both must share their shape and affine.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..constants import find_cases
from .metrics import ZERO_NSD_BELOW_DSC, CaseScore, evaluate_case
from .modality import case_stem, parse_modality


class ScoreError(ValueError):
    """A case that cannot be scored; the message is one line naming the file and what was expected."""


def _array(path: Path, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if key not in archive.files:
                raise ScoreError(f"{path}: no key '{key}' (keys: {', '.join(archive.files) or 'none'})")
            spacing = archive["spacing"] if "spacing" in archive.files else None
            return archive[key], spacing
    except ScoreError:
        raise
    except Exception as error:  # a corrupt or non-npz file: say which one, in one line
        raise ScoreError(f"{path}: not a readable .npz ({type(error).__name__}: {error})") from None


def _nifti_labels(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """A NIfTI label map (as stored), its affine and its header's spacing; non-integer labels are refused."""
    from .npz import CaseError
    from .volumes import read_nifti

    try:
        volume = read_nifti(path)
    except CaseError as error:
        raise ScoreError(str(error)) from None
    data = volume.data
    if not np.issubdtype(data.dtype, np.integer):
        if not np.array_equal(np.rint(data), data):
            raise ScoreError(f"{path}: voxels of dtype {data.dtype} with fractions; expected integer labels")
        data = data.astype(np.int64)
    return data, volume.affine, tuple(float(z) for z in volume.header.get_zooms()[:3])


def score_nifti(segs_path: Path, gts_path: Path) -> CaseScore:
    """DSC / NSD of a NIfTI segmentation against NIfTI ground truth, with the ground truth header's spacing."""
    segs, segs_affine, _ = _nifti_labels(segs_path)
    gts, gts_affine, spacing = _nifti_labels(gts_path)
    if segs.shape != gts.shape:
        raise ScoreError(f"{segs_path}: shape {segs.shape}; expected {gts.shape} as in {gts_path}")
    if not np.allclose(segs_affine, gts_affine, atol=1e-4):
        raise ScoreError(f"{segs_path}: affine {np.round(segs_affine, 4).tolist()}; expected the ground truth's "
                         f"{np.round(gts_affine, 4).tolist()} (a segmentation in another geometry)")
    if not gts.any():
        raise ScoreError(f"{gts_path}: no foreground label; expected labels 1..N")
    return evaluate_case(segs, gts, spacing, zero_nsd_below_dsc=ZERO_NSD_BELOW_DSC)


def score_file(segs_path: str | Path, gts_path: str | Path) -> CaseScore:
    """DSC / NSD of one segmentation file against its ground-truth file, under the task's rules."""
    from .volumes import is_nifti

    segs_path, gts_path = Path(segs_path), Path(gts_path)
    if is_nifti(segs_path):
        return score_nifti(segs_path, gts_path)
    segs, _ = _array(segs_path, "segs")
    gts, spacing = _array(gts_path, "gts")
    if segs.shape != gts.shape:
        raise ScoreError(f"{segs_path}: key 'segs' has shape {segs.shape}; expected {gts.shape} as in {gts_path}")
    if not (np.issubdtype(gts.dtype, np.integer) and np.issubdtype(segs.dtype, np.integer)):
        raise ScoreError(f"{segs_path}: 'segs' is {segs.dtype} and 'gts' is {gts.dtype}; expected integer labels")
    if gts.ndim == 3 and (spacing is None or np.shape(spacing) != (3,)):
        raise ScoreError(f"{gts_path}: key 'spacing' is {None if spacing is None else np.shape(spacing)}; "
                         "expected 3 values for a 3D case")
    if not gts.any():
        raise ScoreError(f"{gts_path}: key 'gts' has no foreground label; expected labels 1..N")
    return evaluate_case(segs, gts, spacing if gts.ndim == 3 else None, zero_nsd_below_dsc=ZERO_NSD_BELOW_DSC)


@dataclass
class Scores:
    """Per-case rows, per-label rows, and the cases that were not scored (each with its one-line reason)."""

    cases: list[dict] = field(default_factory=list)
    labels: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def by_modality(self) -> list[dict]:
        """Mean DSC / NSD per modality, then over all cases."""
        groups: dict[str, list[dict]] = {}
        for row in self.cases:
            groups.setdefault(row["modality"], []).append(row)
        rows = [_mean_row(name, rows) for name, rows in sorted(groups.items())]
        return rows + ([_mean_row("all", self.cases)] if self.cases else [])


def _mean_row(name: str, rows: list[dict]) -> dict:
    return {"modality": name, "cases": len(rows), "dsc": float(np.mean([r["dsc"] for r in rows])),
            "nsd": float(np.mean([r["nsd"] for r in rows]))}


def score_folder(segs_dir: str | Path, gts_dir: str | Path) -> Scores:
    """Every segmentation in `segs_dir` that has ground truth in `gts_dir`; the others are listed, not scored."""
    gts_dir = Path(gts_dir)
    if not gts_dir.is_dir():
        raise FileNotFoundError(f"{gts_dir}: no such folder (expected the ground truth, <case>.npz with key 'gts')")
    from .volumes import is_nifti

    found, scores = find_cases(segs_dir), Scores()
    scores.skipped += found.skipped
    files = found.files + [p for p in sorted(Path(segs_dir).iterdir()) if is_nifti(p)]
    for path in files:
        gt = gts_dir / path.name
        if not gt.is_file():
            scores.skipped.append(f"{path}: no ground truth {gt}")
            continue
        try:
            score = score_file(path, gt)
        except ScoreError as error:
            scores.failed.append(str(error))
            continue
        modality, name = parse_modality(_stem(path)), _stem(path)
        scores.cases.append({"case": name, "modality": modality, "labels": len(score.labels),
                             "dsc": score.mean_dsc, "nsd": score.mean_nsd, "nsd_zeroed": score.nsd_zeroed})
        scores.labels += [{"case": name, "modality": modality, "label": label, "dsc": d, "nsd": n}
                          for label, d, n in zip(score.labels, score.dsc, score.nsd)]
    scored = {path.name for path in files}
    scores.skipped += [f"{gt}: no segmentation in {segs_dir}" for gt in sorted(gts_dir.iterdir())
                       if (gt.suffix.lower() == ".npz" or is_nifti(gt)) and gt.name not in scored]
    return scores


def _stem(path: Path) -> str:
    """The case's name: without `.npz`, `.nii` or `.nii.gz`."""
    from .volumes import output_name

    return output_name(path)[: -len(".nii.gz")] if path.suffix.lower() != ".npz" else case_stem(path)
