"""The task's `.npz` cases: read and validate `imgs` / `boxes` / `spacing`, write `segs` atomically (torch-free).

Every problem is a `CaseError` whose one-line message names the file, the key and what was expected.
The choices for doubtful input are documented in docs/inference.md ("Bad input").
"""
from __future__ import annotations

import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import atomic_file

MAX_BOXES = 65535  # labels must fit in uint16
PREFIXES = {"2DBox_": "2D", "3DBox_": "3D"}
BOX_WIDTH = {"2D": 4, "3D": 6}


class CaseError(ValueError):
    """A case that cannot be segmented as given (one line: file, key, what was expected)."""


@dataclass
class Case:
    """One validated task case; `boxes` are clipped to the image and float64."""

    path: Path
    kind: str  # "2D" or "3D"
    imgs: np.ndarray
    boxes: np.ndarray
    spacing: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name


def label_dtype(n_boxes: int) -> type:
    """uint8 while every label 1..N fits, uint16 beyond (the task's format is uint8)."""
    return np.uint8 if n_boxes <= 255 else np.uint16


def kind_from_name(name: str) -> str | None:
    """"2D" / "3D" from the task's `2DBox_` / `3DBox_` file-name prefix, None without one."""
    return next((kind for prefix, kind in PREFIXES.items() if name.startswith(prefix)), None)


def _is_real(a: np.ndarray) -> bool:
    return a.dtype != np.bool_ and (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating))


def _infer_kind(shape: tuple[int, ...], boxes: np.ndarray, name_kind: str | None, source: str) -> str:
    """2D vs 3D from the boxes' width, checked against the file name; the name or image decides for zero boxes."""
    width = boxes.shape[1] if boxes.ndim == 2 else None
    box_kind = {4: "2D", 6: "3D"}.get(width)
    if boxes.size and (boxes.ndim != 2 or box_kind is None):
        raise CaseError(f"{source}: key 'boxes' has shape {boxes.shape}; expected (N, 4) "
                        "[x_min, y_min, x_max, y_max] for 2D or (N, 6) [x_min, y_min, z_min, x_max, y_max, z_max] for 3D")
    if box_kind and name_kind and box_kind != name_kind:
        raise CaseError(f"{source}: key 'boxes' has width {width} ({box_kind}) but the file name says {name_kind}; "
                        f"expected width {BOX_WIDTH[name_kind]}")
    if box_kind or name_kind:
        return box_kind or name_kind
    return "2D" if len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3)) else "3D"


def _as_array(value: object, key: str, source: str) -> np.ndarray:
    """`value` as a numpy array; one numpy cannot take (a tensor that requires grad, bf16, on a GPU) is a CaseError."""
    try:
        return np.asarray(value)
    except (TypeError, RuntimeError, ValueError) as error:
        reason = (str(error).strip().splitlines() or [""])[0][:160]
        raise CaseError(f"{source}: key '{key}' is a {type(value).__name__} that numpy cannot read ({reason}); "
                        "expected a numpy array (from torch: tensor.detach().float().cpu().numpy())") from None


def check_image(imgs: np.ndarray, kind: str, source: str) -> np.ndarray:
    """A real-valued, finite, non-empty (H, W), (H, W, 1|3) image or (D, H, W) volume."""
    imgs = _as_array(imgs, "imgs", source)
    if not _is_real(imgs):
        raise CaseError(f"{source}: key 'imgs' has dtype {imgs.dtype}; expected a real numeric array (uint8 in the task)")
    if kind == "2D" and not (imgs.ndim == 2 or (imgs.ndim == 3 and imgs.shape[2] in (1, 3))):
        raise CaseError(f"{source}: key 'imgs' has shape {imgs.shape}; expected (H, W, 3) or (H, W) for a 2D case")
    if kind == "3D" and imgs.ndim != 3:
        raise CaseError(f"{source}: key 'imgs' has shape {imgs.shape}; expected (D, H, W) for a 3D case")
    if 0 in imgs.shape:
        raise CaseError(f"{source}: key 'imgs' has shape {imgs.shape}; expected no empty axis")
    if np.issubdtype(imgs.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(imgs)))
        if bad:
            raise CaseError(f"{source}: key 'imgs' has {bad} NaN/inf values; expected finite intensities")
    return imgs


def check_boxes(boxes: np.ndarray, spatial_shape: tuple[int, ...], kind: str, source: str
                ) -> tuple[np.ndarray, list[str]]:
    """Finite, non-empty, non-inverted boxes, clipped to the image (x, y to [0, W], [0, H]; z to [0, D-1]).

    Returns float64 boxes and warnings for the clipped ones; a box wholly outside is an error.
    """
    width = BOX_WIDTH[kind]
    boxes = _as_array(boxes, "boxes", source)
    if boxes.size == 0:  # zero boxes may come as (0,) or (0, k)
        boxes = boxes.reshape(0, width)
    if boxes.ndim != 2 or boxes.shape[1] != width:
        raise CaseError(f"{source}: key 'boxes' has shape {boxes.shape}; expected (N, {width}) for a {kind} case")
    if not _is_real(boxes):
        raise CaseError(f"{source}: key 'boxes' has dtype {boxes.dtype}; expected numbers")
    if len(boxes) > MAX_BOXES:
        raise CaseError(f"{source}: key 'boxes' has {len(boxes)} boxes; expected at most {MAX_BOXES} (uint16 labels)")
    boxes = boxes.astype(np.float64)
    if not np.isfinite(boxes).all():
        row = int(np.flatnonzero(~np.isfinite(boxes).all(axis=1))[0])
        raise CaseError(f"{source}: key 'boxes' row {row} is {boxes[row].tolist()}; expected finite coordinates")
    half = width // 2  # columns [lo..., hi...]: x, y (, z)
    lo, hi = boxes[:, :half], boxes[:, half:]
    empty = (hi[:, :2] <= lo[:, :2]).any(axis=1)
    if kind == "3D":
        empty |= hi[:, 2] < lo[:, 2]  # z is an inclusive slice range: z_min == z_max is one slice
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise CaseError(f"{source}: key 'boxes' row {row} {boxes[row].tolist()} is empty or inverted; "
                        "expected x_min < x_max and y_min < y_max" + (" and z_min <= z_max" if kind == "3D" else ""))
    if kind == "2D":
        upper = np.array([spatial_shape[1], spatial_shape[0]], np.float64)
    else:
        upper = np.array([spatial_shape[2], spatial_shape[1], spatial_shape[0] - 1], np.float64)
    clipped = np.concatenate([np.clip(lo, 0, upper), np.clip(hi, 0, upper)], axis=1)
    c_lo, c_hi = clipped[:, :half], clipped[:, half:]
    outside = (c_hi[:, :2] <= c_lo[:, :2]).any(axis=1) | (lo > upper).any(axis=1) | (hi < 0).any(axis=1)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise CaseError(f"{source}: key 'boxes' row {row} {boxes[row].tolist()} lies wholly outside the image of shape "
                        f"{tuple(spatial_shape)}; expected a box overlapping it")
    warnings = [f"{source}: key 'boxes' row {row} {boxes[row].tolist()} reaches outside the image of shape "
                f"{tuple(spatial_shape)}; clipped to {clipped[row].tolist()}"
                for row in np.flatnonzero((clipped != boxes).any(axis=1))]
    return clipped, warnings


def _spatial_shape(imgs: np.ndarray, kind: str) -> tuple[int, ...]:
    return tuple(imgs.shape[:2]) if kind == "2D" else tuple(imgs.shape)


def check_case(imgs: np.ndarray, boxes: np.ndarray, kind: str, source: str
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validate an image and its boxes for `kind`; returns (imgs, clipped float64 boxes, warnings)."""
    imgs = check_image(imgs, kind, source)
    boxes, warnings = check_boxes(boxes, _spatial_shape(imgs, kind), kind, source)
    return imgs, boxes, warnings


def _check_declared_size(archive: np.lib.npyio.NpzFile, key: str, source: str) -> None:
    """numpy allocates what an array's header declares before reading it: a header declaring more than the
    archive member holds (a corrupt or crafted file) is refused first."""
    info = archive.zip.getinfo(f"{key}.npy" if f"{key}.npy" in archive.zip.namelist() else key)
    with archive.zip.open(info) as member:
        if member.read(len(np.lib.format.MAGIC_PREFIX)) != np.lib.format.MAGIC_PREFIX:
            return  # not an array: numpy reads it as bytes, and validation says what was expected
        member.seek(0)
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        try:
            shape, _, dtype = read_header(member)
        except (SyntaxError, tokenize.TokenError) as error:  # numpy parses the header as a Python literal
            raise CaseError(f"{source}: key '{key}' has a malformed .npy header ({type(error).__name__}); expected "
                            "a numeric array") from None
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > info.file_size:
        raise CaseError(f"{source}: key '{key}' declares shape {shape} of {dtype} ({declared} bytes) in "
                        f"{info.file_size} bytes; expected a complete array (corrupt or truncated)")


def _read_key(archive: np.lib.npyio.NpzFile, key: str, source: str) -> np.ndarray:
    try:
        _check_declared_size(archive, key, source)
        return archive[key]
    except CaseError:
        raise
    except ValueError as error:  # object arrays need pickle, which a task case never uses
        raise CaseError(f"{source}: key '{key}' cannot be read without pickle ({error}); expected a numeric array") from None
    # zip features: NotImplementedError for unsupported compression, RuntimeError for an encrypted member
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as error:
        raise CaseError(f"{source}: key '{key}' is truncated or corrupt ({type(error).__name__}: {error})") from None


def _check_spacing(spacing: np.ndarray, source: str) -> list[str]:
    """Spacing is not used by inference: a malformed one is only worth a warning."""
    if _is_real(spacing) and spacing.ndim == 1 and np.isfinite(spacing).all() and (spacing > 0).all():
        return []
    return [f"{source}: key 'spacing' is {spacing.tolist()!r} ({spacing.dtype}); expected positive finite numbers "
            "(not used for inference)"]


def read_case(path: str | Path) -> Case:
    """Read and validate a task case; a `CaseError` names the file, key and expectation."""
    path = Path(path)
    source = str(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CaseError(f"{source}: no such file; expected a task .npz case") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError) as error:
        raise CaseError(f"{source}: cannot be read as .npz ({type(error).__name__}: {error}); "
                        "expected a zip archive with keys 'imgs' and 'boxes'") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CaseError(f"{source}: holds a single array, not an .npz archive; expected keys 'imgs' and 'boxes'")
    with archive:
        missing = [k for k in ("imgs", "boxes") if k not in archive.files]
        if missing:
            raise CaseError(f"{source}: missing key {', '.join(repr(k) for k in missing)}; found keys {archive.files}")
        imgs = _read_key(archive, "imgs", source)
        boxes = _read_key(archive, "boxes", source)
        spacing = _read_key(archive, "spacing", source) if "spacing" in archive.files else None
    kind = _infer_kind(imgs.shape, boxes, kind_from_name(path.name), source)
    imgs, boxes, warnings = check_case(imgs, boxes, kind, source)
    if spacing is not None:
        warnings += _check_spacing(spacing, source)
    return Case(path, kind, imgs, boxes, spacing, warnings)


def peek_kind(path: str | Path) -> str:
    """"2D" / "3D" of a case as `read_case` decides it, from its name, else its boxes and the image's header only."""
    path = Path(path)
    name_kind = kind_from_name(path.name)
    if name_kind is not None:
        return name_kind
    try:
        with np.load(path, allow_pickle=False) as archive, archive.zip.open("imgs.npy") as member:
            version = np.lib.format.read_magic(member)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape = header(member)[0]  # the header only, not the voxels
            return _infer_kind(tuple(shape), _read_key(archive, "boxes", str(path)), None, str(path))
    except (OSError, KeyError, ValueError, AttributeError, EOFError, zipfile.BadZipFile, zlib.error,
            NotImplementedError, RuntimeError, SyntaxError, tokenize.TokenError) as error:
        raise CaseError(f"{path}: cannot tell 2D from 3D ({type(error).__name__}: {error}); expected a task .npz "
                        "case with keys 'imgs' and 'boxes'") from None


# output key of the class maps of a model with class outputs (`predict --classes`): (C, H, W) or (C, D, H, W) uint8
CLASSES_KEY = "classes"


def write_segs(path: str | Path, segs: np.ndarray, classes: np.ndarray | None = None) -> Path:
    """Write `segs` (and `classes` under `CLASSES_KEY`) with `np.savez_compressed` to a temporary file beside
    `path`, then rename (atomic)."""
    with atomic_file(path) as f:
        np.savez_compressed(f, segs=segs, **({CLASSES_KEY: classes} if classes is not None else {}))
    return Path(path)
