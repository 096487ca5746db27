"""What a model folder holds, from its `format` field (torch-free): how `medsamlite.open` tells folders apart."""
from __future__ import annotations

import json
from pathlib import Path

from ..constants import CONFIG_FILE, DAFT_MANIFEST, FORMAT_COMPILED, FORMAT_DAFT, FORMAT_MODEL

COMPILED, MODEL, ROUTED_COMPILED, ROUTED_MODEL = "compiled", "model", "routed-compiled", "routed-model"


def describe(folder: str | Path) -> str:
    """"compiled", "model" (torch weights), "routed-compiled" or "routed-model"; a ValueError for anything else."""
    folder = Path(folder)
    manifest = folder / DAFT_MANIFEST
    if manifest.is_file():
        meta = _read(manifest)
        if meta.get("format") == FORMAT_DAFT:
            return ROUTED_COMPILED if "compiled" in meta else ROUTED_MODEL
        raise ValueError(f"{manifest}: key 'format' is {meta.get('format')!r}; expected {FORMAT_DAFT!r}")
    config = folder / CONFIG_FILE
    if not config.is_file():
        raise ValueError(f"{folder}: no {CONFIG_FILE} or {DAFT_MANIFEST}; expected a folder written by "
                         "medsamlite (save_model, export or train)")
    kind = {FORMAT_COMPILED: COMPILED, FORMAT_MODEL: MODEL}.get(_read(config).get("format"))
    if kind is None:
        raise ValueError(f"{config}: key 'format' is {_read(config).get('format')!r}; expected "
                         f"{FORMAT_COMPILED!r} (an exported model) or {FORMAT_MODEL!r} (a saved torch model)")
    return kind


def _read(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not readable as JSON ({type(error).__name__}: {error})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    return meta
