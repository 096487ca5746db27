"""The registries (a leaf, in the style of timm's `_registry.py`): encoder and model specs, register / list / get.

Model specs are registered torch-free by `zoo.py` (imported with the package), so listing models and their
facts never imports torch. Encoder specs are registered by the encoder family files (`medsamlite.encoders`,
torch and timm), which `factory` imports before it builds anything.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable

from .config import ModelConfig


@dataclass(frozen=True)
class EncoderSpec:
    """A registered image encoder: its builder and what the checkpoint loader and adapters need of it.

    `build(input_size, **kwargs)` returns a module mapping (B, 3, S, S) to (B, 256, 64, 64).
    `remap` turns a reference checkpoint's encoder keys (prefix `image_encoder.` removed) into ours;
    keys that are already ours pass through unchanged. `derived_keys` are regexes of reference keys
    recomputed from the configuration, never loaded. `adapter_targets` is the default regex of module
    names (relative to the encoder) that LoRA-style adapters wrap.
    """

    name: str
    build: Callable[..., Any]
    remap: Callable[[dict], dict] | None = None
    derived_keys: tuple[str, ...] = ()
    adapter_targets: str = ""


@dataclass(frozen=True)
class Pretrained:
    """Trained weights shipped by an installed package: `package`'s file `path`, its sha256, the extra that installs it."""

    package: str
    path: str
    sha256: str
    extra: str = "weights"


@dataclass(frozen=True)
class ModelSpec:
    """Every fact of a registered model: its architecture (`config`) and what is known about it.

    `pretrained`: packaged trained weights; `golden`: the fixture folder in `shared/golden` that proves it
    against its reference; `reference_params`: (total, image encoder) parameter counts of the reference;
    `distilled_from`: the teacher of a student medsamlite makes (it has no outside reference: its
    architecture is proven against the teacher it starts from, its weights by agreement with it).
    """

    config: ModelConfig
    pretrained: Pretrained | None = None
    golden: str | None = None
    reference_params: tuple[int, int] | None = None
    description: str = ""
    distilled_from: str | None = None

    @property
    def name(self) -> str:
        return self.config.name


_ENCODERS: dict[str, EncoderSpec] = {}
_MODELS: dict[str, ModelSpec] = {}


def register_encoder(name: str, *, remap: Callable[[dict], dict] | None = None, derived_keys: tuple[str, ...] = (),
                     adapter_targets: str = "") -> Callable:
    """Decorator: register an encoder builder under `name`."""

    def wrap(fn: Callable) -> Callable:
        if name in _ENCODERS:
            raise ValueError(f"encoder {name!r} is already registered")
        _ENCODERS[name] = EncoderSpec(name, fn, remap, derived_keys, adapter_targets)
        return fn

    return wrap


def register_model(spec: ModelSpec | ModelConfig) -> ModelSpec:
    """Register a model (an encoder plus SAM heads) with its facts."""
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec(spec)
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    _MODELS[spec.name] = spec
    return spec


def list_models(pattern: str = "*") -> list[str]:
    """Names of registered models, optionally filtered by a glob pattern."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def list_encoders(pattern: str = "*") -> list[str]:
    """Names of registered image encoders (the built-in ones once `medsamlite.encoders` is imported)."""
    return sorted(n for n in _ENCODERS if fnmatch.fnmatch(n, pattern))


def get_model_spec(name: str) -> ModelSpec:
    try:
        return _MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}") from None


def get_model_config(name: str) -> ModelConfig:
    return get_model_spec(name).config


def get_encoder_spec(name: str) -> EncoderSpec:
    """The encoder `name`; a model name stands for its encoder."""
    if name not in _ENCODERS and name in _MODELS:
        name = _MODELS[name].config.encoder
    try:
        return _ENCODERS[name]
    except KeyError:
        raise KeyError(f"unknown encoder {name!r}; registered: {', '.join(sorted(_ENCODERS)) or 'none'} "
                       "(the built-in encoders register when medsamlite.encoders is imported)") from None


def pretrained_source(config: ModelConfig) -> Pretrained | None:
    """The packaged weights that fit `config` exactly: its registered model's, unless the architecture changed."""
    spec = _MODELS.get(config.name)
    return spec.pretrained if spec is not None and spec.config == config else None
