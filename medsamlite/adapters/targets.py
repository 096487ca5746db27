"""Which modules a method acts on: the encoder's registered regex, the caller's regexes or names, one matcher.

A pattern is tried against a module's full name and against its name relative to the image encoder, so
`stages\\.1\\..*qkv` and `image_encoder\\.stages\\.1\\..*qkv` select the same layers. Every method (peft
layers, BitFit's biases, AdaptFormer's MLPs) resolves its targets here.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable

from torch import nn

from .. import encoders  # noqa: F401  (registers the encoders whose default targets are read)
from ..registry import get_encoder_spec

ENCODER = "image_encoder."
DECODER = "mask_decoder"

# The mask decoder's two-way transformer: attention projections and MLP layers.
DECODER_TARGETS = r"mask_decoder\.transformer\..*\.(q_proj|k_proj|v_proj|out_proj|lin1|lin2)"
# Modules peft adds inside a wrapped layer (base layers, adapter factors and vectors, decoder copies).
_INTERNAL = re.compile(r"\.(base_layer|lora_[A-Za-z_]+|ia3_l|vera_[A-Za-z_]+|modules_to_save|original_module)(\.|$)")


def adaptable(module: nn.Module, convs: bool = True) -> bool:
    """A layer a peft tuner can wrap and merge: Linear, or (with `convs`) a Conv2d without groups.

    Depthwise convs cannot take a low-rank update. A layer already wrapped by peft counts as its base
    layer, so further named adapters can join it.
    """
    module = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    return isinstance(module, nn.Linear) or (convs and isinstance(module, nn.Conv2d) and module.groups == 1)


def linear_only(module: nn.Module) -> bool:
    """Linear layers only (AdaLoRA and VeRA have no Conv2d layer in peft)."""
    return adaptable(module, convs=False)


def patterns_of(targets: str | Iterable[str] | None) -> list[str] | None:
    """`targets` as a list of regexes (None stays None: the default)."""
    return None if targets is None else [targets] if isinstance(targets, str) else list(targets)


def matches(patterns: Iterable[str], name: str) -> bool:
    """A pattern may name a module from the model root or from the encoder."""
    relative = name[len(ENCODER):] if name.startswith(ENCODER) else None
    return any(re.fullmatch(p, name) or (relative is not None and re.fullmatch(p, relative)) for p in patterns)


def candidates(model: nn.Module):
    """Named modules, without peft's own (base layers, factors, decoder copies)."""
    return ((n, m) for n, m in model.named_modules() if not _INTERNAL.search(n))


def default_patterns(model: nn.Module) -> list[str]:
    """The encoder's registered `adapter_targets` (each encoder file owns its default)."""
    spec = get_encoder_spec(model.config.encoder)
    own = spec.adapter_targets
    if own and any(adaptable(m) and matches([own], n) for n, m in candidates(model)):
        return [own]
    raise ValueError(f"encoder {spec.name!r} registers no adapter_targets matching an adaptable layer; "
                     "pass targets= (a regex or module names)")


def resolve_targets(model: nn.Module, targets: str | Iterable[str] | None = None, include_decoder: bool = False,
                    accept: Callable[[nn.Module], bool] = adaptable) -> list[str]:
    """Full names of the layers `accept` allows among those `targets` select (default: the encoder's regex)."""
    patterns = default_patterns(model) if targets is None else patterns_of(targets)
    if include_decoder:
        patterns.append(DECODER_TARGETS)
    names = [n for n, m in candidates(model) if matches(patterns, n)]
    refused = [n for n in names if not accept(model.get_submodule(n))]
    chosen = [n for n in names if n not in refused]
    if targets is not None and refused:  # the caller named them, so say why they cannot be used
        raise ValueError(f"targets {patterns} match layers this method cannot wrap (grouped/depthwise conv or "
                         f"another type): {refused[:5]}{' ...' if len(refused) > 5 else ''}")
    if not chosen:
        kinds = "Linear or (non-grouped) Conv2d" if accept is adaptable else "Linear"
        hint = ("; this method wraps Linear layers only and these targets are convolutions: choose a method "
                "that takes Conv2d (lora, ia3, arena), or adapt the mask decoder's Linear layers too "
                "(include_decoder, --include-decoder)" if refused and accept is not adaptable else "")
        raise ValueError(f"targets {patterns} match no {kinds} layer of model '{model.config.name}'{hint}")
    return chosen
