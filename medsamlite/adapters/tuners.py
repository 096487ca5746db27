"""peft tuner layers on a plain `SamLite`: injection, switching, state dicts and peft's own folder layout.

Shared by the PEFT-kind methods (LoRA, ARENA, AdaLoRA, IA3, VeRA): named adapters injected in place,
switched with `activate`, their tensors read and written with peft's functions.
"""
from __future__ import annotations

import contextlib
import copy
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from peft import AdaLoraConfig, PeftConfig, inject_adapter_in_model
from peft.functional import get_peft_model_state_dict, set_peft_model_state_dict
from peft.functional import set_adapter as peft_set_adapter
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..runtime.files import atomic_dir
from .registry import Applied, Request
from .targets import DECODER, adaptable, resolve_targets

# PeftModel.save_pretrained prefixes every key with its wrapper's names; from_pretrained expects them.
PEFT_PREFIX = "base_model.model."
PEFT_WEIGHTS, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"
RECORD_FILE = "medsamlite_adapter.json"  # our record beside peft's files (method, targets, encoder)


def peft_apply(build: Callable[[list[str], Any, bool], PeftConfig], accept: Callable[[nn.Module], bool] = adaptable,
               inject_with: Callable[[PeftConfig, nn.Module, str], None] | None = None) -> Callable:
    """An apply function: resolve the targets `accept` allows, build the peft config, inject it."""

    def apply(model: nn.Module, settings: Any, request: Request) -> Applied:
        names = resolve_targets(model, request.targets, request.include_decoder, accept)
        inject(model, build(names, settings, request.train_decoder), request.adapter_name, inject_with)
        return Applied(names)

    return apply


def modules_to_save(train_decoder: bool) -> list[str] | None:
    """`train_decoder` gives each adapter its own decoder copy (peft `modules_to_save`)."""
    return [DECODER] if train_decoder else None


def inject(model: nn.Module, config: PeftConfig, adapter_name: str,
           inject_with: Callable[[PeftConfig, nn.Module, str], None] | None = None) -> nn.Module:
    """Add adapter `adapter_name` to `model` in place and make it the active, only trainable one."""
    if adapter_name in getattr(model, "peft_config", {}):
        raise ValueError(f"model already has an adapter named {adapter_name!r}; pick another adapter_name")
    # peft's tuner reads an existing `model.peft_config` as "someone is stacking adapters by hand" and warns;
    # it then only adds the new config to that dict, so the tuner is given a clean model and the dicts joined
    others = model.__dict__.pop("peft_config", {})
    try:
        if inject_with is None:
            inject_adapter_in_model(config, model, adapter_name=adapter_name)
        else:
            inject_with(config, model, adapter_name)
    finally:
        model.peft_config = {**others, **getattr(model, "peft_config", {})}
    activate(model, adapter_name)
    return model


def layer_names(model: nn.Module, others: bool = False) -> set[str]:
    """The names peft's layers in `model` give their trained tensors (lora_A, ia3_l, vera_lambda_b, ...).

    `others` adds their untrained ones (AdaLoRA's `ranknum`, VeRA's projections).
    """
    return {n for m in model.modules() if isinstance(m, BaseTunerLayer)
            for n in (*m.adapter_layer_names, *(m.other_param_names if others else ()))}


def adapter_parameter_pattern(model: nn.Module, adapter_name: str | None = None, others: bool = False) -> re.Pattern:
    """Matches the parameter names that belong to adapter `adapter_name` (any adapter when None)."""
    names = "|".join(sorted(map(re.escape, layer_names(model, others) | {"modules_to_save"})))
    adapter = r"[^.]+" if adapter_name is None else re.escape(adapter_name)
    return re.compile(rf"\.({names})\.{adapter}(\.|$)")


def activate(model: nn.Module, adapter_name: str) -> None:
    """Route through `adapter_name` (its layers and decoder copy); only its parameters train."""
    if adapter_name not in getattr(model, "peft_config", {}):
        raise KeyError(f"no adapter {adapter_name!r}; the model has {sorted(getattr(model, 'peft_config', {}))}")
    peft_set_adapter(model, adapter_name)
    own = adapter_parameter_pattern(model, adapter_name)
    for name, p in model.named_parameters():  # peft leaves other adapters' decoder copies trainable
        p.requires_grad_(own.search(name) is not None)


def merge_layer(module: BaseTunerLayer, adapter_name: str) -> None:
    """Fold `adapter_name` into the base weight of `module` (peft's safe merge) if the layer carries it."""
    if any(adapter_name in getattr(module, n) for n in module.adapter_layer_names):
        module.merge(safe_merge=True, adapter_names=[adapter_name])


@contextlib.contextmanager
def full_rank(model: nn.Module, adapter_name: str) -> Iterator[None]:
    """AdaLoRA's tensors read and written at full rank: its pruned components are zeros of E (the same update),
    and peft would resize them through methods of its model wrapper, which a plain `SamLite` has not."""
    config = model.peft_config[adapter_name]
    pattern = config.rank_pattern if isinstance(config, AdaLoraConfig) else None
    if pattern is not None:
        config.rank_pattern = None
    try:
        yield
    finally:
        if pattern is not None:
            config.rank_pattern = pattern


def state_dict(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """peft's adapter state dict (the adapter name removed from the keys)."""
    with full_rank(model, adapter_name):
        return dict(get_peft_model_state_dict(model, adapter_name=adapter_name))


def load_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], adapter_name: str) -> list[str]:
    """Load peft adapter tensors into `adapter_name`; returns the keys that fit no layer."""
    with full_rank(model, adapter_name):
        loaded = set_peft_model_state_dict(model, tensors, adapter_name=adapter_name)
    return list(getattr(loaded, "unexpected_keys", []))


def save_pretrained(model: nn.Module, directory: Path, adapter_name: str, record: dict) -> Path:
    """peft's layout (`adapter_config.json`, `adapter_model.safetensors`) plus our record, written atomically."""
    from safetensors.torch import save_file

    with atomic_dir(directory) as tmp:
        config = copy.copy(model.peft_config[adapter_name])
        config.base_model_name_or_path = model.config.name
        if isinstance(config, AdaLoraConfig):
            config.rank_pattern = None  # the tensors are at full rank (`state_dict`)
        config.save_pretrained(str(tmp))
        tensors = {PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in state_dict(model, adapter_name).items()}
        save_file(tensors, str(tmp / PEFT_WEIGHTS), metadata={"format": "pt"})
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2))
    return directory



def read_pretrained(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The record and (unprefixed) tensors of a folder written by `save_pretrained`."""
    from safetensors.torch import load_file

    for name in (RECORD_FILE, PEFT_WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory}: missing {name}; expected a folder written by "
                                    "adapters.save_pretrained")
    record = json.loads((directory / RECORD_FILE).read_text())
    tensors = {k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k: v
               for k, v in load_file(str(directory / PEFT_WEIGHTS)).items()}
    return record, tensors
