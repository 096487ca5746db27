"""Encoder and model registries in the style of timm (`register_model`, `create_model`, `list_models`)."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .config import ModelConfig

if TYPE_CHECKING:  # torch stays unimported until a model is built
    import torch
    from .models.sam import SamLite

StateDict = Mapping[str, "torch.Tensor"]


@dataclass(frozen=True)
class EncoderSpec:
    """A registered image encoder: builder plus what the checkpoint loader and adapters need.

    `build(input_size, **kwargs)` returns a module mapping (B, 3, S, S) to (B, 256, 64, 64).
    `remap` turns a reference checkpoint's encoder keys (prefix `image_encoder.` removed) into ours;
    keys that are already ours must pass through unchanged.
    `derived_keys` are regexes of reference keys that are recomputed from the configuration and
    must be present in a reference checkpoint but are never loaded from it.
    `adapter_targets` is the default regex of module names (relative to the encoder) for LoRA-style adapters.
    """

    name: str
    build: Callable[..., Any]
    family: str
    input_size: int = 256
    remap: Callable[[dict], dict] | None = None
    derived_keys: tuple[str, ...] = ()
    adapter_targets: str = ""


_ENCODERS: dict[str, EncoderSpec] = {}
_MODELS: dict[str, ModelConfig] = {}


def register_encoder(name: str, *, family: str, input_size: int = 256, remap=None,
                     derived_keys: tuple[str, ...] = (), adapter_targets: str = ""):
    """Decorator: register an encoder builder under `name`."""

    def wrap(fn):
        if name in _ENCODERS:
            raise ValueError(f"encoder {name!r} is already registered")
        _ENCODERS[name] = EncoderSpec(name, fn, family, input_size, remap, derived_keys, adapter_targets)
        return fn

    return wrap


def register_model(config: ModelConfig) -> ModelConfig:
    """Register a model configuration (an encoder plus SAM heads)."""
    if config.name in _MODELS:
        raise ValueError(f"model {config.name!r} is already registered")
    _MODELS[config.name] = config
    return config


def _ensure_builtin() -> None:
    from . import zoo  # noqa: F401  (registers the built-in model configs)


def _ensure_encoders() -> None:
    from . import encoders  # noqa: F401  (imports torch and timm; registers every encoder)


def list_models(pattern: str = "*") -> list[str]:
    """Names of registered models, optionally filtered by a glob pattern."""
    _ensure_builtin()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def list_encoders(pattern: str = "*") -> list[str]:
    """Names of registered image encoders."""
    _ensure_encoders()
    return sorted(n for n in _ENCODERS if fnmatch.fnmatch(n, pattern))


def get_model_config(name: str) -> ModelConfig:
    _ensure_builtin()
    try:
        return _MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}") from None


def get_encoder_spec(name: str) -> EncoderSpec:
    _ensure_encoders()
    if name not in _ENCODERS and name in _MODELS:  # a model name stands for its encoder
        name = _MODELS[name].encoder
    try:
        return _ENCODERS[name]
    except KeyError:
        raise KeyError(f"unknown encoder {name!r}; registered: {', '.join(sorted(_ENCODERS))}") from None


def resolve_config(name: str | ModelConfig, **overrides: Any) -> ModelConfig:
    """The config of `name` with overrides applied; `encoder=` may name an encoder or a model."""
    config = name if isinstance(name, ModelConfig) else get_model_config(name)
    if "encoder" in overrides:
        overrides["encoder"] = get_encoder_spec(overrides["encoder"]).name
        overrides.setdefault("encoder_kwargs", {})
        overrides.setdefault("pretrained", None)  # pretrained weights belong to the original encoder
    return config.replace(**overrides) if overrides else config


def create_model(name: str | ModelConfig, checkpoint: str | StateDict | None = None,
                 pretrained: bool = False, **overrides: Any) -> "SamLite":
    """Build a registered model; optionally load a checkpoint or the packaged pretrained weights."""
    from .models.sam import SamLite

    config = resolve_config(name, **overrides)
    model = SamLite(config)
    if pretrained and checkpoint is not None:
        raise ValueError("pass either checkpoint= or pretrained=True, not both")
    if pretrained:
        from .checkpoints import pretrained_path

        checkpoint = pretrained_path(config)
    if checkpoint is not None:
        from .checkpoints import load_checkpoint

        load_checkpoint(model, checkpoint)
    return model.eval()
