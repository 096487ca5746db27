"""`prepare(src, dst)`: training cases to an uncompressed, memory-mappable layout plus one index (torch-free).

Layout of `dst`:

    prepared.json           format, source, counts per modality (written last: its presence means complete)
    index.npy               one row per (case, slice, label), `ENTRY_DTYPE`, sorted by case, slice, label
    cases.npy               one row per case, `CASE_DTYPE` (row i is case id i of the index)
    cases/<name>/image.npy  the labelled slices, (N, H, W) for 3D or (1, H, W[, 3]) for 2D, as stored
    cases/<name>/labels.npy (N, H, W) integer labels
    cases/<name>/index.npy  the case's part of the index (case id 0), merged into index.npy

Every case is written into a hidden temporary folder and renamed into place, so a case folder exists
only complete: a rerun skips the prepared cases and rebuilds the index from their parts. A case that
cannot be read is named in one line and skipped; the others go on.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..constants import FORMAT_PREPARED, MODALITIES
from ..runtime.files import ORPHANS, atomic_dir, atomic_file
from ..runtime.modality import UNKNOWN
from .sources import SourceCase, discover, read_source

MANIFEST, INDEX_FILE, CASES_FILE, CASES_DIR = "prepared.json", "index.npy", "cases.npy", "cases"
IMAGE_FILE, LABELS_FILE, PART_FILE = "image.npy", "labels.npy", "index.npy"
TMP_PREFIX = ".tmp-"  # the temporary folders of versions before atomic_dir
MODALITY_CODES = (*MODALITIES, UNKNOWN)  # a fixed table, so the parts of separate runs merge as they are
ENTRY_DTYPE = np.dtype([("case", "<i4"), ("slice", "<i4"), ("row", "<i4"), ("label", "<i4"),
                        ("box", "<i4", (4,)), ("area", "<i8"), ("modality", "i1"), ("dim", "i1")])


def case_dtype(name_bytes: int) -> np.dtype:
    return np.dtype([("name", f"S{max(name_bytes, 1)}"), ("modality", "i1"), ("dim", "i1"), ("slices", "<i4")])


@dataclass
class CaseResult:
    """What preparing one case did: `status` is prepared, done (already there), empty (no label) or failed."""

    name: str
    modality: str
    status: str
    message: str = ""
    bytes: int = 0
    entries: np.ndarray = field(default_factory=lambda: np.zeros(0, ENTRY_DTYPE))


@dataclass
class PrepareReport:
    """The closing summary of a run."""

    dst: Path
    counts: dict[str, int]  # status -> cases
    modalities: dict[str, dict[str, int]]  # modality -> cases, slices, labels, bytes (the whole index)
    bytes_written: int
    failures: list[str]
    problems: list[str]  # source entries that are not cases (e.g. an image without labels)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.problems

    def summary(self) -> str:
        """Cases by outcome, then a table per modality: cases, slices, labels, bytes."""
        lines = [f"{self.dst}: " + ", ".join(f"{n} {s}" for s, n in self.counts.items())
                 + f"; {_size(self.bytes_written)} written"]
        lines.append(f"{'modality':<14}{'cases':>8}{'slices':>10}{'labels':>10}{'bytes':>12}")
        for m, c in self.modalities.items():
            lines.append(f"{m:<14}{c['cases']:>8}{c['slices']:>10}{c['labels']:>10}{_size(c['bytes']):>12}")
        if self.failures or self.problems:
            lines.append(f"{len(self.failures)} case(s) failed, {len(self.problems)} source entr(ies) unusable")
        return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def slice_entries(labels: np.ndarray, slices: np.ndarray, modality: str, dim: int) -> np.ndarray:
    """Index rows of a case: for each stored slice and label, the tight box [x0, y0, x1, y1] and the area."""
    from scipy import ndimage

    rows = []
    for row, (z, plane) in enumerate(zip(slices, labels)):
        areas = np.bincount(plane.ravel())
        for label, found in enumerate(ndimage.find_objects(plane), start=1):
            if found is not None:
                ys, xs = found
                rows.append((0, z, row, label, (xs.start, ys.start, xs.stop - 1, ys.stop - 1), areas[label],
                             MODALITY_CODES.index(modality), dim))
    return np.array(rows, dtype=ENTRY_DTYPE)


def case_folder(dst: Path, name: str) -> Path:
    return dst / CASES_DIR / name


def _save(path: Path, array: np.ndarray) -> int:
    with path.open("wb") as f:
        np.save(f, array, allow_pickle=False)
    return path.stat().st_size


def prepare_case(case: SourceCase, dst: Path, window: tuple[float, float] | None = None) -> CaseResult:
    """Read, slice and write one case atomically (temporary folder, then rename); never raises."""
    final = case_folder(dst, case.name)
    try:
        image, gts = read_source(case, window)
        dim = 2 if gts.ndim == 2 else 3
        if dim == 2:
            image, gts, slices = image[None], gts[None], np.array([-1])
        else:
            slices = np.flatnonzero(gts.reshape(gts.shape[0], -1).any(axis=1))
            image, gts = image[slices], gts[slices]
        if slices.size == 0 or not gts.any():
            return CaseResult(case.name, case.modality, "empty", f"{case.image}: no labelled pixel")
        entries = slice_entries(gts, slices, case.modality, dim)
        with atomic_dir(final) as tmp:
            size = _save(tmp / IMAGE_FILE, np.ascontiguousarray(image)) + _save(tmp / LABELS_FILE, np.ascontiguousarray(gts))
            size += _save(tmp / PART_FILE, entries)
        return CaseResult(case.name, case.modality, "prepared", bytes=size, entries=entries)
    except Exception as error:  # one bad case never stops the others: it is named and skipped
        message = str(error) if str(error).startswith(str(case.image)) else f"{case.image}: {type(error).__name__}: {error}"
        return CaseResult(case.name, case.modality, "failed", message.splitlines()[0])


def _prepare_or_skip(job: tuple[SourceCase, Path, tuple[float, float] | None]) -> CaseResult:
    case, dst, window = job
    folder = case_folder(dst, case.name)
    if folder.is_dir():
        return CaseResult(case.name, case.modality, "done", entries=np.load(folder / PART_FILE))
    return prepare_case(case, dst, window)


def _remove_stale(dst: Path) -> None:
    """Temporary folders of an interrupted run (`atomic_dir`'s hidden names; `.tmp-` ones of older versions)."""
    cases = dst / CASES_DIR
    for tmp in sorted([*cases.rglob(ORPHANS), *cases.rglob(f"{TMP_PREFIX}*")]) if cases.is_dir() else []:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)


def write_index(dst: Path, results: list[CaseResult], source: str) -> dict[str, dict[str, int]]:
    """Merge the case parts (in source order) into index.npy and cases.npy, then write prepared.json."""
    kept = [r for r in results if r.entries.size]
    parts = []
    for case_id, r in enumerate(kept):
        part = r.entries.copy()
        part["case"], part["modality"] = case_id, MODALITY_CODES.index(r.modality)  # this run's modality wins
        parts.append(part)
    index = np.concatenate(parts) if parts else np.zeros(0, ENTRY_DTYPE)
    names = [r.name.encode() for r in kept]
    cases = np.zeros(len(kept), case_dtype(max(map(len, names), default=1)))
    cases["name"] = names
    cases["modality"] = [MODALITY_CODES.index(r.modality) for r in kept]
    cases["dim"] = [r.entries["dim"][0] for r in kept]
    cases["slices"] = [np.unique(r.entries["row"]).size for r in kept]
    per: dict[str, dict[str, int]] = {}
    for r, row in zip(kept, cases):
        c = per.setdefault(r.modality, {"cases": 0, "slices": 0, "labels": 0, "bytes": 0})
        c["cases"] += 1
        c["slices"] += int(row["slices"])
        c["labels"] += len(r.entries)
        c["bytes"] += r.bytes or sum(f.stat().st_size for f in case_folder(dst, r.name).iterdir())
    per = dict(sorted(per.items()))
    write_tables(dst, index, cases, per, source)
    return per


def write_tables(dst: Path, index: np.ndarray, cases: np.ndarray, per_modality: dict[str, dict[str, int]],
                 source: str) -> None:
    """index.npy, cases.npy, then prepared.json (last: a folder with a manifest is complete), each atomically."""
    for path, table in ((dst / INDEX_FILE, index), (dst / CASES_FILE, cases)):
        with atomic_file(path) as f:
            np.save(f, table, allow_pickle=False)
    manifest = {"format": FORMAT_PREPARED, "version": 1, "source": source, "cases": len(cases),
                "entries": int(len(index)), "modality_codes": list(MODALITY_CODES), "modalities": per_modality}
    with atomic_file(dst / MANIFEST) as f:
        f.write(json.dumps(manifest, indent=1).encode())


def prepare(src: str | Path, dst: str | Path, workers: int | None = None, modality: str | None = None,
            window: tuple[float, float] | None = None, progress: bool = True) -> PrepareReport:
    """Prepare every case under `src` into `dst` (see the module doc); `workers` processes (default: all cores).

    `modality` sets every case's modality (else it is read from the file name); `window` (level,
    width) is the CT window for NIfTI volumes (default soft tissue 40/400).
    """
    from tqdm import tqdm

    if modality is not None and modality not in MODALITY_CODES:
        raise ValueError(f"modality {modality!r}: expected one of {', '.join(MODALITY_CODES)}")
    src, dst = Path(src), Path(dst)
    cases, problems = discover(src, modality)
    if not cases:
        raise FileNotFoundError(f"{src}: no cases found (expected task .npz files, imgs/ + gts/, "
                                "images/ + labels/ NIfTI or PNG/JPG pairs)")
    dst.mkdir(parents=True, exist_ok=True)
    _remove_stale(dst)
    workers = (os.cpu_count() or 1) if workers is None else workers
    jobs = [(c, dst, window) for c in cases]
    bar = tqdm(total=len(jobs), desc="prepare", unit="case", disable=not progress, file=sys.stderr)
    results: list[CaseResult] = []
    with ProcessPoolExecutor(workers) if workers > 1 else _Inline() as pool:
        for result in pool.map(_prepare_or_skip, jobs, chunksize=max(1, min(64, len(jobs) // (8 * max(workers, 1))))):
            if result.status == "failed":
                bar.write(result.message, file=sys.stderr)
            results.append(result)
            bar.update()
    bar.close()
    for p in problems:
        print(p, file=sys.stderr)
    per = write_index(dst, results, str(src))
    counts = {s: sum(r.status == s for r in results) for s in ("prepared", "done", "empty", "failed")}
    return PrepareReport(dst, counts, per, sum(r.bytes for r in results),
                         [r.message for r in results if r.status == "failed"], problems)


class _Inline:
    """`map` in this process (workers <= 1): simpler to debug, no start-up cost for small sets."""

    def __enter__(self) -> "_Inline":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def map(self, fn, iterable, chunksize: int = 1):
        return map(fn, iterable)
