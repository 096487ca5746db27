"""Cache keys and atomic cache entries for compiled models.

An entry is a folder `<cache_dir>/<key>/` that appears in one `rename`: it is built under a temporary
name in the same parent and renamed into place, so a reader never sees a half-written entry and two
processes compiling the same model leave one complete entry (the loser discards its copy). Its
`config.json` records a digest of every other file (`runtime.files`); an entry that fails the check
is moved aside and rebuilt. Entries get the modes the umask gives, not mkdtemp's 0700.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from ..constants import CONFIG_FILE
from ..runtime.compile_cache import default_cache_dir, digest  # noqa: F401 (the cache's torch-free side)
from ..runtime.files import atomic_dir, file_digest, file_digests, remove_dir


def source_digest(classes: Iterable[type]) -> str:
    """Digest of the contents (not paths) of the source files defining `classes`: graphs change with their code."""
    files = sorted({f for f in (inspect.getsourcefile(c) for c in classes) if f})
    return digest({"sources": [file_digest(Path(f)) for f in files]})


def entry_ready(path: Path) -> bool:
    """An entry is complete once its metadata file exists (written last, before the rename)."""
    return (path / CONFIG_FILE).is_file()


def write_meta(path: Path, meta: Mapping[str, Any]) -> None:
    """Write `config.json` with the digest of every other file in `path` (so write it last)."""
    meta = {**meta, "digests": file_digests(path, skip=(CONFIG_FILE,))}
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))


def discard(entry: Path) -> None:
    """Remove a broken entry: renamed aside first, so no reader meets it half-deleted."""
    remove_dir(entry)


@contextlib.contextmanager
def building(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `final`; on success rename it to `final` unless another
    process got there first (ours is then discarded). On error nothing is left behind."""
    with atomic_dir(final, replace=False) as tmp:
        yield tmp
    if not entry_ready(final):
        raise FileExistsError(f"{final}: taken by a folder that is not a complete cache entry")
