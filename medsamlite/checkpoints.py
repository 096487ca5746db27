"""Checkpoints: reading them safely, every reference layout, and our own save folders.

A reference checkpoint may be a plain state_dict, wrapped (`model`, `state_dict`, ...), prefixed
(`module.` from DataParallel, `model.` from Lightning, `student_encoder.` from distillation), a bare
encoder state_dict, or a whole pickled module. `load_checkpoint` normalises all of them to the
reference key layout, lets the encoder's `remap` map encoder keys onto ours, drops keys the encoder
recomputes (`derived_keys`), and loads strictly with an error that names every problem under the
checkpoint's own key names.

Files are read with `torch.load(weights_only=True)`: tensors and plain containers only, so nothing in the
file can run. A whole pickled module needs the full unpickler, which executes code from the file; it is
used only when the caller says they trust the file (`trust=True`, `--trust-checkpoint`), and
`convert_checkpoint` turns such a file into safetensors once.
"""
from __future__ import annotations

from .extras import require

require("torch", "medsamlite.checkpoints")

import hashlib
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from . import encoders  # noqa: F401  (registers the built-in encoders, whose remaps the loader applies)
from .config import ModelConfig
from .constants import CONFIG_FILE, FORMAT_MODEL, WEIGHTS_FILE
from .registry import get_encoder_spec
from .runtime.files import atomic_file

HEADS = ("image_encoder.", "prompt_encoder.", "mask_decoder.", "class_prompts.")
_WRAPPERS = ("state_dict", "model", "model_state_dict", "module", "net", "weights")
_PREFIXES = ("module.", "model.", "_orig_mod.")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class LoadReport:
    """What `load_checkpoint` found and did."""

    layout: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    dropped_derived: int = 0


def read_checkpoint(path: str | Path, trust: bool = False) -> Any:
    """The object stored at `path` (a safetensors file, our save folder, or a torch file), read without running code.

    `trust=True` also reads files that hold pickled objects (a whole model), which executes code from them.
    """
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(error)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as error:
        if not trust and isinstance(error, pickle.UnpicklingError):
            raise CheckpointError(
                f"{path}: holds pickled Python objects beyond tensors (e.g. a whole model), and unpickling them "
                "runs code from the file; if you trust it, pass --trust-checkpoint (trust_checkpoint=True), or "
                "convert it once with `medsamlite convert-checkpoint`") from None
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def convert_checkpoint(source: str | Path, destination: str | Path) -> Path:
    """Rewrite a trusted checkpoint (any layout, pickled modules included) as a safetensors state_dict."""
    from safetensors.torch import save

    destination = Path(destination)
    if destination.suffix != ".safetensors":
        raise CheckpointError(f"{destination}: expected a .safetensors file name")
    sd, _ = unwrap(read_checkpoint(source, trust=True), str(source))
    with atomic_file(destination) as f:
        f.write(save({k: v.detach().contiguous().clone() for k, v in sd.items()}))
    return destination


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unwrap(obj: Any, source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], str]:
    """Find the state_dict inside a loaded checkpoint; also returns how it was wrapped."""
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict()), "pickled module"
    if _is_state_dict(obj):
        return dict(obj), "state_dict"
    if isinstance(obj, Mapping):
        for key in _WRAPPERS:
            if key in obj:
                sd, how = unwrap(obj[key], source)
                return sd, f"'{key}' -> {how}"
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors, "state_dict (non-tensor entries ignored)"
    raise CheckpointError(f"{source}: no state_dict found (top level is {type(obj).__name__}"
                          f"{' with keys ' + str(sorted(obj)[:10]) if isinstance(obj, Mapping) else ''})")


# The key transforms below act on {key: original key}, so an error can name keys as the checkpoint has them.
Names = dict[str, str]


def _strip_prefixes(names: Names) -> tuple[Names, list[str]]:
    stripped = []
    while True:
        prefix = next((p for p in _PREFIXES if all(k.startswith(p) for k in names)), None)
        if prefix is None:
            return names, stripped
        names = {k[len(prefix):]: v for k, v in names.items()}
        stripped.append(prefix)


def to_reference_layout(names: Names) -> tuple[Names, str]:
    """Strip wrapper prefixes and put bare encoder keys under `image_encoder.`."""
    names, stripped = _strip_prefixes(names)
    notes = [f"prefix '{p}' stripped" for p in stripped]
    if any(k.startswith("student_encoder.") for k in names):
        names = {("image_encoder." + k[len("student_encoder."):] if k.startswith("student_encoder.") else k): v
                 for k, v in names.items() if not k.startswith("teacher_encoder.")}
        notes.append("distillation checkpoint: student_encoder -> image_encoder, teacher dropped")
    bare = [k for k in names if not k.startswith(HEADS)]
    if bare:
        names = {(k if k.startswith(HEADS) else "image_encoder." + k): v for k, v in names.items()}
        notes.append(f"{len(bare)} encoder keys without the 'image_encoder.' prefix")
    return names, "; ".join(notes) or "reference layout"


def _map_encoder_keys(model: nn.Module, names: Names) -> tuple[Names, int]:
    spec = get_encoder_spec(model.config.encoder)
    enc = {k[len("image_encoder."):]: v for k, v in names.items() if k.startswith("image_encoder.")}
    derived = [k for k in enc if any(re.search(p, k) for p in spec.derived_keys)]
    for k in derived:  # recomputed from the configuration, never taken from a checkpoint
        del enc[k]
    ours = set(model.image_encoder.state_dict())
    if spec.remap is not None and not set(enc) <= ours:
        enc = spec.remap(enc)  # renames keys; the values (original names) pass through
    rest = {k: v for k, v in names.items() if not k.startswith("image_encoder.")}
    return {**{"image_encoder." + k: v for k, v in enc.items()}, **rest}, len(derived)


def clear_caches(model: nn.Module) -> None:
    """Drop eval-time caches (e.g. TinyViT's attention biases) so they are rebuilt from the new weights."""
    for m in model.modules():
        if isinstance(getattr(m, "attention_bias_cache", None), dict):
            m.attention_bias_cache = {}
        if callable(getattr(m, "clear_cache", None)):
            m.clear_cache()


def _fmt(names: list[str], limit: int = 6) -> str:
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def load_checkpoint(model: nn.Module, checkpoint: str | Path | Mapping[str, torch.Tensor],
                    strict: bool = True, trust: bool = False) -> LoadReport:
    """Load a checkpoint in any supported layout into a `SamLite`; strict by default.

    `trust=True` allows a file that holds a whole pickled module (reading it runs the file's code).
    """
    source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "state_dict"
    obj = read_checkpoint(checkpoint, trust) if isinstance(checkpoint, (str, Path)) else checkpoint
    tensors, wrapping = unwrap(obj, source)
    names, layout = to_reference_layout({k: k for k in tensors})
    names, n_derived = _map_encoder_keys(model, names)
    own = model.state_dict()
    report = LoadReport(layout=f"{wrapping}; {layout}", dropped_derived=n_derived)
    report.missing = sorted(set(own) - set(names))
    report.unexpected = sorted(names[k] for k in set(names) - set(own))
    report.mismatched = sorted(f"{names[k]} {tuple(tensors[names[k]].shape)} vs model {tuple(own[k].shape)}"
                               for k in set(names) & set(own) if tensors[names[k]].shape != own[k].shape)
    problems = [f"{label} ({len(keys)}): {_fmt(keys)}" for label, keys in
                (("missing keys", report.missing), ("unexpected keys", report.unexpected),
                 ("shape mismatches", report.mismatched)) if keys]
    if report.mismatched or (strict and problems):
        raise CheckpointError(f"{source} does not fit model '{model.config.name}' "
                              f"(encoder {model.config.encoder}; found {report.layout}):\n  " + "\n  ".join(problems))
    model.load_state_dict({k: tensors[v] for k, v in names.items() if k in own}, strict=False)
    clear_caches(model)
    return report


def save_model(model: nn.Module, directory: str | Path) -> Path:
    """Save weights (safetensors) and config (JSON) into `directory`; `load_model` reads it back.

    Each file is written atomically (the folder may hold other things: a distillation's logs and checkpoints);
    `runtime.files.atomic_dir` makes a whole folder atomic.
    """
    from safetensors.torch import save

    directory = Path(directory)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_file(directory / WEIGHTS_FILE) as f:
        f.write(save(tensors, metadata={"format": FORMAT_MODEL}))
    meta = {"format": FORMAT_MODEL, "version": 1, "config": model.config.to_dict()}
    with atomic_file(directory / CONFIG_FILE) as f:
        f.write(json.dumps(meta, indent=2, sort_keys=True).encode())
    return directory


def state_dict_digest(tensors: Mapping[str, torch.Tensor], layout: bool = True) -> str:
    """sha256 over every tensor's name, dtype and shape (`layout=False`: name only) and raw bytes, in name order.

    The one digest of weights: compile-cache keys (`export.cache`) use the layout; the training loop's
    rank digests and the teacher cache's key (`training.loop.weights_digest`) hash names and bytes only,
    as they always have, so existing teacher caches keep their keys.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode() if layout else name.encode())
        if t.numel():
            # raw bytes, so every dtype (bf16 included, which numpy cannot hold) hashes the same way
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_config(directory: str | Path) -> ModelConfig:
    """The `ModelConfig` stored by `save_model` in `directory`."""
    path = Path(directory) / CONFIG_FILE
    try:
        meta = json.loads(path.read_text())
        return ModelConfig.from_dict(meta["config"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: not a medsamlite model config ({error})") from error
