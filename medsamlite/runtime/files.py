"""Files medsamlite writes: per-file digests checked on open, permissions that follow the umask, temp-file litter.

A compiled folder records `{file: {"sha256", "bytes"}}` for every file beside its `config.json`, so a
truncated, deleted or overwritten graph is caught on open instead of segmenting into an empty mask.
sha256 because it is the fastest full hash here (hashlib's SHA-NI path: ~1.2 GB/s, 33 ms for a
40 MB model; blake2b 52 ms), and every byte is checked: a size check alone misses an overwritten block.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

DIGEST = "sha256"
# OpenVINO's compiled-blob cache is written at open time, never recorded
UNRECORDED = ("ov_cache",)
# what atomic_file / atomic_dir leave when a run is killed: .NAME. + mkstemp's 8 random characters + .tmp
ORPHANS = ".*.????????.tmp"


class IntegrityError(ValueError):
    """A file of a compiled folder is missing, truncated or not what was recorded (one line, naming the file)."""


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, DIGEST).hexdigest()


def _recordable(folder: Path, skip: Iterable[str]) -> list[Path]:
    skip = set(skip)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).parts[0] not in skip
                  and p.relative_to(folder).parts[0] not in UNRECORDED)


def file_digests(folder: str | Path, skip: Iterable[str] = ()) -> dict[str, dict[str, object]]:
    """{relative path: {"sha256": hex, "bytes": size}} of every file under `folder` but `skip` and caches."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): {DIGEST: file_digest(p), "bytes": p.stat().st_size}
            for p in _recordable(folder, skip)}


def check_files(folder: str | Path, recorded: dict[str, dict[str, object]]) -> None:
    """Raise `IntegrityError` naming the first file that is missing, of another size or another digest."""
    folder = Path(folder)
    for name, record in sorted(recorded.items()):
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{path}: missing (recorded in {folder / 'config.json'}); the folder is incomplete")
        size = path.stat().st_size
        if size != record["bytes"]:
            raise IntegrityError(f"{path}: {size} bytes, expected {record['bytes']} (truncated or replaced)")
        if file_digest(path) != record[DIGEST]:
            raise IntegrityError(f"{path}: content differs from its recorded {DIGEST} (corrupted or modified)")


def check_recorded(folder: str | Path, meta: dict, skip: Callable[[str], bool] = lambda name: False) -> None:
    """Check the files of a compiled folder (but those `skip` names) against the digests `config.json` records."""
    if not isinstance(meta.get("digests"), dict):
        raise IntegrityError(f"{Path(folder) / 'config.json'}: records no file digests (written by an older "
                             "medsamlite); export the model again")
    check_files(folder, {name: record for name, record in meta["digests"].items() if not skip(name)})


def current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def chmod_per_umask(path: str | Path) -> None:
    """Give `path` (and everything under a folder) the modes a plain open/mkdir would have: 0666/0777 & ~umask.

    tempfile.mkstemp / mkdtemp create 0600 / 0700, which a reader under another user id cannot open.
    """
    path, mask = Path(path), current_umask()
    for p in [path, *(path.rglob("*") if path.is_dir() else ())]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` (umask modes) in one rename when the block ends; nothing on error.

    The temporary name is `.NAME.XXXXXXXX.tmp` beside `path` (what `remove_orphans` clears after a kill).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        chmod_per_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, replace: bool = True) -> Iterator[Path]:
    """A folder to fill that becomes `path` (umask modes) when the block ends, replacing what was there; nothing
    on error. A reader meets the old folder or the new one, never a half-written one.

    Filled under `.NAME.XXXXXXXX.tmp` beside `path`; the old folder is renamed aside, then removed.
    `replace=False`: the first writer wins: where `path` is a folder with files by then, it stays and this
    one is discarded (the caller checks that the folder it finds is complete).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if replace:
            replace_dir(tmp, path)
        else:
            chmod_per_umask(tmp)
            try:
                os.rename(tmp, path)  # atomic; fails where `path` is a folder that is not empty
            except OSError:
                if not path.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(folder: str | Path, path: str | Path) -> None:
    """Move the filled `folder` to `path` (umask modes), replacing what was there (renamed aside, then removed):
    a reader never meets a half-written or half-deleted folder."""
    chmod_per_umask(folder)
    aside = _set_aside(Path(path))
    os.replace(folder, path)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def remove_dir(path: str | Path) -> None:
    """Remove a folder without a reader ever meeting it half-deleted: renamed aside first (gone if not there)."""
    aside = _set_aside(Path(path))
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _set_aside(path: Path) -> Path | None:
    """Rename the folder `path` onto a fresh hidden one beside it (`.NAME.XXXXXXXX.old`), returned; None if absent."""
    if not path.exists():
        return None
    aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
    try:
        os.replace(path, aside)  # onto an empty folder: one rename
    except FileNotFoundError:  # another process removed it first
        aside.rmdir()
        return None
    return aside


def remove_orphans(folder: str | Path, pattern: str) -> list[Path]:
    """Delete the files matching `pattern` in `folder` (temp files of a killed run); returns them."""
    removed = []
    for p in Path(folder).glob(pattern):
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
