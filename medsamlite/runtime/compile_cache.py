"""The compile cache's torch-free side: where it lives, its keys, and the index that finds a packaged model's
compiled entry without building the model.

A compiled entry's key (`medsamlite.export.compile.cache_key`) hashes the torch model itself: its tensors, its
module tree and the source of its modules, so finding it needs torch, timm and the model built. For a registered
model with its packaged weights the same entry is also found from what identifies it without torch: the
weights file's sha256, the model config, medsamlite's version and a digest of every medsamlite source file
(`code_digest`: any code change misses, as a change to the model's code misses the full key), the backend and
its version, the precision and the decoders. After a build through torch, `record_entry` writes that key's
index file, `<cache>/pretrained/<key>.json`, beside the entries: the entry's name and the versions of the
packages that built it (torch, timm, onnx). `find_entry` returns the entry while each of those still
installed has the recorded version (absent ones cannot have changed what runs) and the entry is complete.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import ModelConfig
from ..constants import CONFIG_FILE, FORMAT_COMPILED, __version__
from .files import atomic_file, file_digest

ENV_CACHE = "MEDSAMLITE_CACHE"
INDEX_STAGE = "pretrained"
# the packages that build and trace a model: an entry built under other versions of them is not found
BUILDERS = ("torch", "timm", "onnx")


def default_cache_dir() -> Path:
    """`$MEDSAMLITE_CACHE`, else `$XDG_CACHE_HOME/medsamlite`, else `~/.cache/medsamlite`."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "medsamlite"


def digest(parts: Mapping[str, Any]) -> str:
    """A short stable key (sha256 prefix) of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def runtime_version(backend: str) -> str:
    """The installed version of a backend's runtime."""
    if backend == "openvino":
        import openvino as ov

        return ov.get_version()
    import onnxruntime as ort

    return ort.__version__


@functools.cache
def code_digest() -> str:
    """Digest of every medsamlite source file (relative path and contents): read once per process."""
    package = Path(__file__).resolve().parents[1]
    return digest({p.relative_to(package).as_posix(): file_digest(p) for p in sorted(package.rglob("*.py"))})


def builder_versions() -> dict[str, str | None]:
    """The installed versions of `BUILDERS` from their metadata (None: not installed), without importing them."""
    versions: dict[str, str | None] = {}
    for name in BUILDERS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def index_key(config: ModelConfig, weights: Path, backend: str, precision: str, decoders: Sequence[str]) -> str:
    """The index key of a packaged model's compiled entry (see the module docstring)."""
    return digest({"weights": file_digest(weights), "config": config.to_dict(), "medsamlite": __version__,
                   "code": code_digest(), "backend": backend, "backend_version": runtime_version(backend),
                   "precision": precision, "decoders": list(decoders), "format": FORMAT_COMPILED})


def index_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / INDEX_STAGE / f"{key}.json"


def find_entry(cache_dir: Path, key: str) -> Path | None:
    """The entry `key` indexes, while it is complete and built by the installed versions; else None."""
    try:
        record = json.loads(index_file(cache_dir, key).read_text())
        entry = cache_dir / record["entry"]
        recorded = record["versions"]
    except (OSError, ValueError, KeyError, TypeError):  # no index yet, or one from another version
        return None
    installed = builder_versions()
    if any(installed[name] is not None and installed[name] != recorded.get(name) for name in BUILDERS):
        return None
    return entry if (entry / CONFIG_FILE).is_file() else None


def record_entry(cache_dir: Path, key: str, entry: Path) -> None:
    """Index `entry` (a folder in `cache_dir`) under `key`, with the builders' installed versions."""
    record = {"entry": Path(entry).name, "versions": builder_versions()}
    with atomic_file(index_file(cache_dir, key)) as out:
        out.write(json.dumps(record, indent=2, sort_keys=True).encode())


def packaged_weights(source: Any) -> Path | None:
    """The file of packaged weights (`registry.Pretrained`: its `package` and `path`) where that package is
    installed (not verified); else None."""
    spec = importlib.util.find_spec(source.package) if source is not None else None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / source.path
    return path if path.is_file() else None
