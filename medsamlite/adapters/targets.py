"""Which modules an adapter wraps: the encoder's registered regex, a per-family fallback, or the caller's."""
from __future__ import annotations

import re
from typing import Iterable

from torch import nn

from .. import encoders  # noqa: F401  (registers the encoders whose default targets are read)
from ..registry import get_encoder_spec

ENCODER = "image_encoder."

# The mask decoder's two-way transformer: attention projections and MLP layers.
DECODER_TARGETS = r"mask_decoder\.transformer\..*\.(q_proj|k_proj|v_proj|out_proj|lin1|lin2)"
_INTERNAL = re.compile(r"\.(base_layer|lora_[A-Za-z_]+|modules_to_save|original_module)(\.|$)")


def adaptable(module: nn.Module) -> bool:
    """A layer LoRA can wrap and merge: Linear, or a Conv2d without groups (depthwise convs cannot).

    A layer already wrapped by peft counts as its base layer, so further named adapters can join it.
    """
    module = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _candidates(model: nn.Module):
    """Named modules, without peft's own (base layers, factors, decoder copies)."""
    return ((n, m) for n, m in model.named_modules() if not _INTERNAL.search(n))


def _matches(patterns: Iterable[str], name: str) -> bool:
    """A pattern may name a module from the model root or from the encoder."""
    relative = name[len(ENCODER):] if name.startswith(ENCODER) else None
    return any(re.fullmatch(p, name) or (relative is not None and re.fullmatch(p, relative)) for p in patterns)


def default_patterns(model: nn.Module) -> list[str]:
    """The encoder's registered `adapter_targets` (each encoder file owns its default)."""
    spec = get_encoder_spec(model.config.encoder)
    own = spec.adapter_targets
    if own and any(adaptable(m) and _matches([own], n) for n, m in _candidates(model)):
        return [own]
    raise ValueError(f"encoder {spec.name!r} registers no adapter_targets matching an adaptable layer; "
                     "pass targets= (a regex or module names)")


def resolve_targets(model: nn.Module, targets: str | Iterable[str] | None = None,
                    include_decoder: bool = False) -> list[str]:
    """Full names of the adaptable modules selected by `targets` (regexes or names; default per encoder)."""
    patterns = default_patterns(model) if targets is None else [targets] if isinstance(targets, str) else list(targets)
    if include_decoder:
        patterns.append(DECODER_TARGETS)
    names = [n for n, m in _candidates(model) if _matches(patterns, n)]
    refused = [n for n in names if not adaptable(model.get_submodule(n))]
    chosen = [n for n in names if n not in refused]
    if targets is not None and refused:  # the caller named them, so say why they cannot be used
        raise ValueError(f"targets {patterns} match layers LoRA cannot wrap (grouped/depthwise conv or another "
                         f"type): {refused[:5]}{' ...' if len(refused) > 5 else ''}")
    if not chosen:
        raise ValueError(f"targets {patterns} match no Linear or (non-grouped) Conv2d layer of model "
                         f"'{model.config.name}'")
    return chosen
