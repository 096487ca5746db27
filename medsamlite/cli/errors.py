"""What the commands share for failing cleanly: a one-line `SetupError` and the folder checks done before any model loads."""
from __future__ import annotations

import os
from pathlib import Path


class SetupError(RuntimeError):
    """The run cannot start (model, weights or folders); reported as one line, exit code 1."""


def one_line(error: BaseException) -> str:
    """`Type: message` on one line (torch and runtimes put advice on later lines)."""
    if isinstance(error, OSError) and error.strerror:  # str() repeats the path in quotes
        text = error.strerror
    else:
        text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return f"{type(error).__name__}: {' '.join(text.split())}"


def writable_folder(path: Path) -> Path:
    """Create the output folder `path` (or accept an existing one) that this process can write into."""
    if path.exists() and not path.is_dir():
        raise SetupError(f"{path}: exists and is not a folder; expected an output folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SetupError(f"{path}: cannot create the output folder ({one_line(error)})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SetupError(f"{path}: the output folder is not writable by this user")
    return path
