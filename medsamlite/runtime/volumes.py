"""NIfTI volumes and DICOM series with their geometry, box prompts from prompts.json, NIfTI label maps (torch-free).

A volume's array is kept as stored, indexed (i, j, k); its affine maps (i, j, k) to world millimetres (RAS, as
nibabel gives it). Voxel boxes are [i_min, j_min, k_min, i_max, j_max, k_max]: a task case (z, y, x) written as
NIfTI with `imgs.transpose(2, 1, 0)` keeps its boxes. The slice axis of the propagation is the header's
`slice_dim` where set, else the one axis with the coarsest spacing, else k. Label maps are written as NIfTI with
the input's affine and header (DICOM: the series' geometry). nibabel and pydicom are the `medical` extra.
Every problem is a one-line `CaseError` naming the file (and the key) and what was expected; sizes read from a
header are checked against the file before anything is allocated.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_file
from .modality import parse_modality
from .npz import CaseError, check_boxes, label_dtype
from .predictor import CaseResult
from .windowing import apply_window

NIFTI_SUFFIXES = (".nii.gz", ".nii")
OUTPUT_SUFFIX = ".nii.gz"
PROMPT_SPACES = ("voxel", "world")
# most voxels a header may declare (2**28: 1 GiB as float32): a larger one is refused before anything is read
MAX_VOXELS = 1 << 28
MAX_FILE_BYTES = MAX_VOXELS * 8 + (1 << 20)  # float64 voxels and a header with extensions
MAX_PROMPTS_BYTES = 64 << 20
DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"
# relative deviation of a slice gap from the series' step that counts as a missing (or extra) slice
GAP_TOLERANCE = 0.1
# DICOM modality tags -> the task's modality names
DICOM_MODALITIES = {"CT": "CT", "MR": "MR", "PT": "PET"}
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A 3D image as stored (i, j, k), its voxel-to-world affine (mm, RAS) and, for NIfTI, its header."""

    path: Path
    data: np.ndarray
    affine: np.ndarray
    modality: str
    header: Any = None  # a nibabel NIfTI header; None for DICOM
    slice_axis: int = 2
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k (the affine's column norms)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)


# discovery -----------------------------------------------------------------------------------------


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES) and not path.name.startswith(".") and path.is_file()


def _looks_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))
    except OSError:
        return False
    return head[DICOM_MAGIC_OFFSET:] == DICOM_MAGIC or path.suffix.lower() == ".dcm"


def is_dicom_series(folder: Path) -> bool:
    """A folder that holds DICOM files (by their `DICM` magic or a `.dcm` suffix), one series per folder."""
    return folder.is_dir() and any(_looks_dicom(p) for p in _files(folder))


def find_volumes(path: Path) -> list[Path]:
    """NIfTI files and DICOM series folders named by `path`: itself, or the entries of the folder."""
    if is_nifti(path) or is_dicom_series(path):
        return [path]
    if not path.is_dir():
        return []
    return [p for p in sorted(path.iterdir()) if not p.name.startswith(".") and (is_nifti(p) or is_dicom_series(p))]


def output_name(path: Path) -> str:
    """The label map's file name: the input's name (a series: its folder's), as `.nii.gz`."""
    lower = path.name.lower()
    stem = next((path.name[: -len(s)] for s in NIFTI_SUFFIXES if lower.endswith(s)), path.name)
    return stem + OUTPUT_SUFFIX


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != "DICOMDIR")


# reading -------------------------------------------------------------------------------------------


def _optional(module: str, path: Path) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise CaseError(f"{path}: reading it needs {module} (pip install 'medsamlite[medical]')") from None


def _check_size(path: Path, shape: tuple[int, ...], source: str) -> int:
    if len(shape) != 3:
        raise CaseError(f"{source}: the image has shape {shape} ({len(shape)}D); expected one 3D volume")
    if min(shape) < 1:
        raise CaseError(f"{source}: the image has shape {shape}; expected no empty axis")
    voxels = int(np.prod(shape, dtype=object))
    if voxels > MAX_VOXELS:
        raise CaseError(f"{source}: the header declares {shape} = {voxels} voxels; expected at most {MAX_VOXELS}")
    return voxels


def _load_nifti(nib: Any, path: Path) -> tuple[Any, int]:
    """The NIfTI image (header parsed, voxels not yet read) and the bytes the file holds once decompressed.

    A .nii.gz is decompressed here, in chunks and at most `MAX_FILE_BYTES`, so that its real size is known
    before nibabel allocates what the header declares; a .nii is read without mmap, which would crash the
    process on a truncated file.
    """
    if not path.name.lower().endswith(".gz"):
        return nib.load(path, mmap=False), path.stat().st_size
    with gzip.open(path, "rb") as f:
        raw = f.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise CaseError(f"{path}: decompresses to more than {MAX_FILE_BYTES} bytes; expected a smaller volume")
    size = max(int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big"))  # sizeof_hdr, either byte order
    return (nib.Nifti2Image if size == 540 else nib.Nifti1Image).from_bytes(raw), len(raw)


def _checked_affine(affine: np.ndarray, source: str) -> np.ndarray:
    affine = np.asarray(affine, np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise CaseError(f"{source}: the voxel-to-world affine is {affine.tolist()}; expected a finite invertible 4x4")
    return affine


def _checked_data(data: np.ndarray, source: str) -> np.ndarray:
    if data.dtype == np.bool_ or not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise CaseError(f"{source}: voxels of dtype {data.dtype}; expected real numbers (one channel)")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise CaseError(f"{source}: {bad} voxels are NaN/inf; expected finite intensities")
    return data


def read_nifti(path: str | Path) -> Volume:
    """A 3D NIfTI volume (a 4D one with a single volume is taken as 3D) with its affine and header."""
    path = Path(path)
    nib = _optional("nibabel", path)
    try:
        with _quiet("nibabel.global"):
            image, stored = _load_nifti(nib, path)
    except FileNotFoundError:
        raise CaseError(f"{path}: no such file; expected a .nii or .nii.gz volume") from None
    except CaseError:
        raise
    except Exception as error:  # nibabel raises many types for a bad file
        raise CaseError(f"{path}: cannot be read as NIfTI ({type(error).__name__}: {_text(error)})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise CaseError(f"{path}: a {type(image).__name__}; expected a NIfTI-1 or NIfTI-2 volume")
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    voxels = _check_size(path, shape, str(path))
    header = image.header
    needed = int(header.get_data_offset()) + voxels * header.get_data_dtype().itemsize
    if stored < needed:  # refused before nibabel allocates what the header declares
        raise CaseError(f"{path}: holds {stored} bytes of header and voxels; its header needs {needed} "
                        "(truncated, or a corrupt header)")
    try:
        data = np.asarray(image.dataobj).reshape(shape)
    except Exception as error:  # truncated or corrupt voxel data
        raise CaseError(f"{path}: the voxels cannot be read ({type(error).__name__}: {_text(error)}); "
                        "expected a complete NIfTI file") from None
    affine = _checked_affine(image.affine, str(path))
    return Volume(path, _checked_data(data, str(path)), affine, parse_modality(output_name(path)[:-7]),
                  header, _slice_axis(header, affine))


@contextlib.contextmanager
def _quiet(logger_name: str) -> Any:
    """nibabel and pydicom log and warn about the problems they fix on lines of their own; the checks here say
    in one line what matters."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _slice_axis(header: Any, affine: np.ndarray) -> int:
    """The acquisition's slice axis: the header's `slice_dim`, else the one coarsest axis, else k."""
    try:
        axis = header.get_dim_info()[2]
    except Exception:  # a dim_info byte nibabel cannot decode says nothing
        axis = None
    if axis in (0, 1, 2):
        return int(axis)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    coarsest = int(np.argmax(spacing))
    others = np.delete(spacing, coarsest)
    return coarsest if spacing[coarsest] > 1.01 * others.max() else 2


def read_dicom_series(folder: str | Path) -> Volume:
    """One DICOM series (a folder of single-frame slices) stacked along its normal, with its geometry in RAS."""
    folder = Path(folder)
    pydicom = _optional("pydicom", folder)
    files = [f for f in _files(folder) if _looks_dicom(f)]
    if not files:
        raise CaseError(f"{folder}: no DICOM files; expected a folder holding one series")
    with _quiet("pydicom"):
        slices = [_dicom_slice(pydicom, f) for f in files]
    series = sorted({s["series"] for s in slices})
    if len(series) > 1:
        raise CaseError(f"{folder}: holds {len(series)} series ({', '.join(map(repr, series[:3]))}); "
                        "expected one series per folder")
    first = slices[0]
    for s in slices[1:]:
        for key in ("rows", "columns", "orientation", "spacing"):
            if not np.allclose(s[key], first[key], atol=1e-4):
                raise CaseError(f"{s['path']}: {key} {np.round(s[key], 6).tolist()}; expected "
                                f"{np.round(first[key], 6).tolist()} as in {first['path'].name} (one series)")
    _check_size(folder, (int(first["columns"][0]), int(first["rows"][0]), len(slices)), str(folder))
    row, col = first["orientation"][:3], first["orientation"][3:]
    normal = np.cross(row, col)
    if not (np.isclose(np.linalg.norm(row), 1, atol=1e-3) and np.isclose(np.linalg.norm(col), 1, atol=1e-3)
            and abs(row @ col) < 1e-3):
        raise CaseError(f"{first['path']}: ImageOrientationPatient {first['orientation'].tolist()}; expected two "
                        "orthogonal unit vectors")
    slices.sort(key=lambda s: float(s["position"] @ normal))
    step = _slice_step(slices, normal, folder)
    affine = np.eye(4)
    affine[:3, 0] = row * first["spacing"][1]  # i: along a row, i.e. the column index
    affine[:3, 1] = col * first["spacing"][0]  # j: down a column, i.e. the row index
    affine[:3, 2] = normal * step
    affine[:3, 3] = slices[0]["position"]
    with _quiet("pydicom"):
        data = np.stack([_dicom_pixels(s) for s in slices], axis=-1).transpose(1, 0, 2)  # (rows, cols, k) -> (i, j, k)
    modality = DICOM_MODALITIES.get(first["modality"], parse_modality(folder.name))
    ignored = [f"{folder}: ignored {f.name} (not DICOM)" for f in _files(folder) if f not in files]
    return Volume(folder, _checked_data(data, str(folder)), _LPS_TO_RAS @ affine, modality, None, 2, ignored)


def _slice_step(slices: list[dict], normal: np.ndarray, folder: Path) -> float:
    """The even distance between neighbouring slices; a gap (a missing slice) or a repeat is an error."""
    if len(slices) == 1:
        return float(slices[0]["thickness"] or 1.0)
    distances = np.array([s["position"] @ normal for s in slices])
    gaps = np.diff(distances)
    step = float(np.median(gaps))
    if step <= 1e-6:
        raise CaseError(f"{folder}: slices {slices[0]['path'].name} and {slices[1]['path'].name} share a position; "
                        "expected one slice per position")
    bad = np.flatnonzero(np.abs(gaps - step) > GAP_TOLERANCE * step)
    if bad.size:
        k = int(bad[0])
        raise CaseError(f"{folder}: a gap of {gaps[k]:.4g} mm between {slices[k]['path'].name} and "
                        f"{slices[k + 1]['path'].name}; expected even steps of {step:.4g} mm (a missing slice?)")
    return step


def _dicom_slice(pydicom: Any, path: Path) -> dict[str, Any]:
    """The header fields of one slice that the series needs; its pixels are decoded later."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as error:
        raise CaseError(f"{path}: cannot be read as DICOM ({type(error).__name__}: {_text(error)})") from None
    try:
        if int(getattr(ds, "NumberOfFrames", 1) or 1) != 1 or int(getattr(ds, "SamplesPerPixel", 1)) != 1:
            raise CaseError(f"{path}: {ds.get('NumberOfFrames', 1)!r} frames of {ds.get('SamplesPerPixel', 1)!r} "
                            "samples; expected a single-frame, single-channel slice")
        fields = {"path": path, "series": str(ds.get("SeriesInstanceUID", "")), "modality": str(ds.get("Modality", "")),
                  "rows": np.array([int(ds.Rows)]), "columns": np.array([int(ds.Columns)]),
                  "orientation": np.array([float(v) for v in ds.ImageOrientationPatient], np.float64),
                  "position": np.array([float(v) for v in ds.ImagePositionPatient], np.float64),
                  "spacing": np.array([float(v) for v in ds.PixelSpacing], np.float64),
                  "thickness": float(ds.get("SliceThickness", 0) or 0), "dataset": ds}
    except CaseError:
        raise
    except Exception as error:  # a missing or malformed tag
        raise CaseError(f"{path}: {type(error).__name__}: {_text(error)}; expected Rows, Columns, "
                        "ImageOrientationPatient (6), ImagePositionPatient (3) and PixelSpacing (2)") from None
    shapes = {"orientation": 6, "position": 3, "spacing": 2}
    for key, size in shapes.items():
        if fields[key].shape != (size,) or not np.isfinite(fields[key]).all():
            raise CaseError(f"{path}: {key} {fields[key].tolist()}; expected {size} finite numbers")
    if (fields["spacing"] <= 0).any() or fields["rows"][0] < 1 or fields["columns"][0] < 1:
        raise CaseError(f"{path}: PixelSpacing {fields['spacing'].tolist()}, {fields['rows'][0]}x"
                        f"{fields['columns'][0]} pixels; expected positive sizes")
    return fields


def _dicom_pixels(fields: dict[str, Any]) -> np.ndarray:
    """One slice's stored values (rows, columns), rescaled to modality units (e.g. HU) where the slice says so."""
    ds, path = fields["dataset"], fields["path"]
    try:
        pixels = ds.pixel_array
    except Exception as error:  # truncated pixel data, an undecodable transfer syntax
        raise CaseError(f"{path}: the pixel data cannot be decoded ({type(error).__name__}: {_text(error)})") from None
    if pixels.shape != (int(fields["rows"][0]), int(fields["columns"][0])):
        raise CaseError(f"{path}: pixels of shape {pixels.shape}; expected (Rows, Columns)")
    try:
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    except (ValueError, TypeError) as error:  # a garbled decimal string
        raise CaseError(f"{path}: RescaleSlope/RescaleIntercept are not numbers ({_text(error)}); expected decimal "
                        "strings") from None
    if (slope, intercept) != (1.0, 0.0):
        pixels = pixels * slope + intercept
    return pixels


def read_volume(path: str | Path) -> Volume:
    """A NIfTI file or a DICOM series folder."""
    path = Path(path)
    return read_dicom_series(path) if path.is_dir() else read_nifti(path)


def _text(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]


# prompts -------------------------------------------------------------------------------------------


def read_prompts(path: str | Path) -> dict[str, Any]:
    """prompts.json: an object mapping each input's file (or series folder) name to its prompts."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_PROMPTS_BYTES:
            raise CaseError(f"{path}: {size} bytes; expected a prompts file of at most {MAX_PROMPTS_BYTES}")
        prompts = json.loads(path.read_bytes().decode("utf-8"))
    except CaseError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise CaseError(f"{path}: cannot be read as JSON ({type(error).__name__}: {_text(error)}); expected "
                        '{"<input name>": {"boxes": [[x_min, y_min, z_min, x_max, y_max, z_max], ...]}}') from None
    if not isinstance(prompts, dict):
        raise CaseError(f"{path}: holds a {type(prompts).__name__}; expected an object keyed by input name")
    return prompts


def unused_prompts(prompts: dict[str, Any], inputs: list[Path], source: str | Path) -> list[str]:
    """Warnings for keys that name no input (a path, a typo): they are ignored, never opened."""
    names = {p.name for p in inputs}
    return [f"{source}: key {key!r} names no input (expected a file or series folder name in the input folder); "
            "ignored" for key in prompts if key not in names]


def case_boxes(prompts: dict[str, Any], name: str, source: str | Path) -> np.ndarray:
    """The boxes (N, 6) float64 of input `name`: label n is box n."""
    where = f"{source}: key {name!r}"
    if name not in prompts:
        raise CaseError(f"{where} is missing; expected the prompts of every input")
    entry = prompts[name]
    if not isinstance(entry, dict) or set(entry) != {"boxes"}:
        keys = sorted(map(str, entry)) if isinstance(entry, dict) else type(entry).__name__
        raise CaseError(f"{where} holds {keys}; expected {{\"boxes\": [[x_min, y_min, z_min, x_max, y_max, z_max], "
                        "...]}} (points are not supported yet)")
    boxes = entry["boxes"]
    if not isinstance(boxes, list) or not boxes:
        raise CaseError(f"{where}: 'boxes' is {_short(boxes)}; expected a non-empty list of boxes (label n is box n)")
    for label, box in enumerate(boxes, start=1):
        if not box:
            raise CaseError(f"{where}: label {label} has no box ({_short(box)}); expected "
                            "[x_min, y_min, z_min, x_max, y_max, z_max]")
        if not (isinstance(box, list) and len(box) == 6 and all(_is_number(v) for v in box)):
            raise CaseError(f"{where}: label {label} box {_short(box)}; expected 6 finite numbers "
                            "[x_min, y_min, z_min, x_max, y_max, z_max]")
    return np.array(boxes, np.float64)


def _is_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return bool(np.isfinite(float(value)))
    except OverflowError:  # a JSON integer beyond float range
        return False


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def world_to_voxel(boxes: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World boxes (mm, RAS) to voxel boxes: the voxel bounding box of each box's 8 corners."""
    inverse = np.linalg.inv(affine)
    out = np.empty_like(boxes)
    for n, box in enumerate(boxes):
        corners = np.array(np.meshgrid(*zip(box[:3], box[3:]), indexing="ij")).reshape(3, -1)
        voxels = inverse[:3, :3] @ corners + inverse[:3, 3:]
        # rounding drops the noise of the round trip (float32 affines: 1e-6), so an integer slice stays that slice
        out[n, :3], out[n, 3:] = np.round(voxels.min(axis=1), 4), np.round(voxels.max(axis=1), 4)
    return out


def voxel_boxes(boxes: np.ndarray, volume: Volume, space: str, source: str) -> tuple[np.ndarray, list[str]]:
    """Boxes in voxel (i, j, k) space, clipped to the volume; a box wholly outside is an error."""
    if space not in PROMPT_SPACES:
        raise ValueError(f"prompt space {space!r}; expected one of {PROMPT_SPACES}")
    lo, hi = boxes[:, :3], boxes[:, 3:]
    if space == "world":
        inverted = np.flatnonzero((hi < lo).any(axis=1))
        if inverted.size:
            raise CaseError(f"{source}: box {int(inverted[0]) + 1} {boxes[inverted[0]].tolist()} is inverted; "
                            "expected min <= max on every axis")
        boxes = world_to_voxel(boxes, volume.affine)
    # (i, j, k) boxes over the (k, j, i) array are the task's (x, y, z) boxes over its (z, y, x) volume
    return check_boxes(boxes, volume.data.shape[::-1], "3D", source)


# predicting ----------------------------------------------------------------------------------------


def slice_order(slice_axis: int) -> tuple[int, int, int]:
    """The (slice, row, column) axes of the predictor's volume: the other two keep their order, the later as rows."""
    rest = [a for a in range(3) if a != slice_axis]
    return slice_axis, rest[1], rest[0]


def predict_volume(predictor: Any, volume: Volume, boxes: np.ndarray, window: str = "auto") -> np.ndarray:
    """The label map (i, j, k) of a volume and voxel boxes (N, 6), propagated along the volume's slice axis."""
    order = slice_order(volume.slice_axis)
    image = np.ascontiguousarray(apply_window(volume.data, window, volume.modality).transpose(order))
    column, row, axis = order[2], order[1], order[0]
    task_boxes = boxes[:, [column, row, axis, column + 3, row + 3, axis + 3]]
    # the slice range is inclusive: clip it to the last slice of the axis it now runs along
    task_boxes[:, [2, 5]] = np.minimum(task_boxes[:, [2, 5]], image.shape[0] - 1)
    segs = predictor.predict_3d(image, task_boxes)
    return np.ascontiguousarray(segs.transpose(np.argsort(order)))


def write_label_map(path: str | Path, segs: np.ndarray, volume: Volume) -> Path:
    """`segs` (i, j, k) as NIfTI with the input's affine and header (qform/sform codes, pixdim), atomically."""
    nib = _optional("nibabel", Path(path))
    if volume.header is not None:
        kind = nib.Nifti2Image if isinstance(volume.header, nib.Nifti2Header) else nib.Nifti1Image
        image = kind(segs, volume.affine, volume.header)
    else:  # a DICOM series: its geometry, in scanner coordinates, stacked along k
        image = nib.Nifti1Image(segs, volume.affine)
        image.set_qform(volume.affine, code=1)
        image.set_sform(volume.affine, code=1)
        image.header.set_dim_info(slice=2)
    image.set_data_dtype(segs.dtype)
    image.header.set_slope_inter(1.0, 0.0)  # labels as stored, whatever scaling the image had
    payload = image.to_bytes()
    with atomic_file(path) as f:
        f.write(gzip.compress(payload, compresslevel=6) if str(path).lower().endswith(".gz") else payload)
    return Path(path)


def predict_volume_file(predictor: Any, in_path: str | Path, out_path: str | Path, prompts: dict[str, Any],
                        prompts_source: str | Path, space: str = "voxel", window: str = "auto") -> CaseResult:
    """Segment one NIfTI file or DICOM series with its boxes from `prompts`; write the NIfTI label map atomically."""
    start = time.perf_counter()
    in_path, out_path = Path(in_path), Path(out_path)
    read_start = time.perf_counter()
    boxes = case_boxes(prompts, in_path.name, prompts_source)
    volume = read_volume(in_path)
    boxes, warnings = voxel_boxes(boxes, volume, space, f"{prompts_source}: key {in_path.name!r}")
    read = time.perf_counter() - read_start
    segs = predict_volume(predictor, volume, boxes, window).astype(label_dtype(len(boxes)), copy=False)
    phases = dict(predictor.timings)
    write_start = time.perf_counter()
    write_label_map(out_path, segs, volume)
    phases.update(read=read, write=time.perf_counter() - write_start)
    return CaseResult(volume.name, "3D", tuple(volume.data.shape), len(boxes), time.perf_counter() - start, phases,
                      out_path, volume.warnings + warnings)
