"""`apply`, `merge`, `set_adapter`, `save_adapter`, `load_adapter`: one switch between adaptation methods.

A model carries either peft adapters (`lora`, `arena`; several named ones on one base) or one
parameter selection (`bitfit`, `norm`, `full`). What was applied is recorded on the model
(`model.adapter_records`) so that it can be saved alone, re-applied on a fresh model and merged.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from peft.functional import get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import ModulesToSaveWrapper
from torch import nn

from . import arena, bitfit, lora, norm
from .targets import resolve_targets

PEFT_METHODS = ("lora", "arena")
SELECTION_METHODS = ("bitfit", "norm", "full")
METHODS = PEFT_METHODS + SELECTION_METHODS
FORMAT = "medsamlite-adapter"
DEFAULT = "default"


@dataclass
class AdapterRecord:
    """What `apply` did: enough to apply the same adapter to a fresh model and load its weights."""

    method: str
    name: str
    model: str
    encoder: str
    targets: list[str] = field(default_factory=list)  # wrapped modules (peft) or trained parameters
    settings: dict[str, Any] = field(default_factory=dict)
    train_decoder: bool = False


@dataclass
class AdapterSummary:
    """Trainable parameter count of a model after `apply`."""

    method: str
    adapter: str
    trainable: int
    total: int
    layers: int

    @property
    def fraction(self) -> float:
        return self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return (f"{self.method} '{self.adapter}': {self.trainable:,} trainable of {self.total:,} "
                f"({100 * self.fraction:.2f}%) in {self.layers} layers/tensors")


def records(model: nn.Module) -> dict[str, AdapterRecord]:
    """The adapters applied to `model`, by name."""
    return model.__dict__.setdefault("adapter_records", {})


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters with `requires_grad`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def summary(model: nn.Module, adapter: str | None = None) -> AdapterSummary:
    """Trainable count of the active (or named) adapter."""
    recs = records(model)
    if not recs:
        raise ValueError(f"model '{model.config.name}' has no adapter applied")
    rec = recs[adapter] if adapter else recs[active_adapter(model)]
    total = sum(p.numel() for n, p in model.named_parameters() if not _is_adapter_param(n))
    return AdapterSummary(rec.method, rec.name, trainable_parameters(model), total, len(rec.targets))


def _is_adapter_param(name: str) -> bool:
    return re.search(r"\.(lora_[A-Za-z_]+|modules_to_save)\.", name + ".") is not None


def active_adapter(model: nn.Module) -> str:
    """Name of the adapter the model currently routes through."""
    recs = records(model)
    if not recs:
        raise ValueError(f"model '{model.config.name}' has no adapter applied")
    return model.__dict__.get("active_adapter_name", next(iter(recs)))


def _settings(method: str, config: dict[str, Any]):
    cls = {"lora": lora.LoraSettings, "arena": arena.ArenaSettings}.get(method)
    if cls is None:
        if config:
            raise TypeError(f"method {method!r} takes no settings, got {sorted(config)}")
        return None
    try:
        return cls(**config)
    except TypeError:
        allowed = sorted(cls.__dataclass_fields__)
        raise TypeError(f"unknown settings {sorted(set(config) - set(allowed))} for method {method!r}; "
                        f"expected some of {allowed}") from None


def apply(model: nn.Module, method: str, targets: str | Iterable[str] | None = None, include_decoder: bool = False,
          train_decoder: bool = False, adapter_name: str = DEFAULT, **config: Any) -> nn.Module:
    """Make only `method`'s parameters trainable in `model` (in place) and return it.

    method: `lora` / `arena` (peft layers on `targets`: regexes or names, default per encoder family),
    `bitfit` (biases of the encoder, or of the modules matching `targets`), `norm` (norm affine
    parameters), `full` (everything). `include_decoder` adds the mask decoder's attention/MLP layers
    (its biases, its norms); `train_decoder` trains the whole decoder too (a copy per adapter for peft
    methods). `config`: `r`, `alpha`, `dropout` (and `lam` for arena). `summary(model)` reports the count.
    """
    if method not in METHODS:
        raise ValueError(f"unknown adaptation method {method!r}; expected one of {', '.join(METHODS)}")
    settings = _settings(method, config)
    recs = records(model)
    if adapter_name in recs:
        raise ValueError(f"model already has an adapter named {adapter_name!r}; pick another adapter_name")
    kinds = {r.method for r in recs.values()}
    if kinds and not (kinds == {method} and method in PEFT_METHODS):
        raise ValueError(f"model already carries {sorted(kinds)} adapters; several named adapters are supported "
                         f"only for one peft method (lora or arena), not {method!r} on top")
    rec = AdapterRecord(method, adapter_name, model.config.name, model.config.encoder,
                        settings=settings.to_dict() if settings else {}, train_decoder=train_decoder)
    if method in PEFT_METHODS:
        rec.targets = resolve_targets(model, targets, include_decoder)
        make = lora.lora_config if method == "lora" else arena.arena_config
        lora.inject(model, make(rec.targets, settings, train_decoder), adapter_name)
    else:
        if method == "bitfit":
            patterns = None if targets is None else [targets] if isinstance(targets, str) else list(targets)
            rec.targets = bitfit.bias_parameters(model, patterns, include_decoder)
        elif method == "norm":
            rec.targets = norm.norm_parameters(model, include_decoder)
        else:
            rec.targets = [n for n, _ in model.named_parameters()]
        if train_decoder:
            rec.targets += [n for n, _ in model.named_parameters() if n.startswith("mask_decoder.")
                            and n not in rec.targets]
        _train_only(model, rec.targets)
    recs[adapter_name] = rec
    model.__dict__["active_adapter_name"] = adapter_name
    return model


def _train_only(model: nn.Module, names: Iterable[str]) -> None:
    chosen = set(names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)


def set_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Route the model through the named peft adapter (and its decoder copy); only it trains."""
    rec = records(model).get(adapter_name)
    if rec is None:
        raise KeyError(f"no adapter {adapter_name!r}; the model has {sorted(records(model))}")
    if rec.method in PEFT_METHODS:
        lora.activate(model, adapter_name)
    model.__dict__["active_adapter_name"] = adapter_name
    return model


def merge(model: nn.Module, adapter: str | None = None) -> nn.Module:
    """A plain copy of `model` with the active (or named) adapter folded into the base weights.

    peft layers become their base layers (merged with peft's safe merge; ARENA components with a
    zero gate add nothing), the adapter's decoder copy replaces the shared decoder; `model` is unchanged.
    """
    name = adapter or active_adapter(model)
    if name not in records(model):
        raise KeyError(f"no adapter {name!r}; the model has {sorted(records(model))}")
    return _plain(model, name)


def unload(model: nn.Module) -> nn.Module:
    """A plain copy of the shared base of `model`, without any peft adapter (selection methods keep theirs)."""
    return _plain(model, None)


def _plain(model: nn.Module, name: str | None) -> nn.Module:
    from ..checkpoints import clear_caches

    plain = copy.deepcopy(model)
    for module_name, module in list(plain.named_modules()):
        if isinstance(module, BaseTunerLayer):
            if name is not None and name in module.lora_A:
                module.merge(safe_merge=True, adapter_names=[name])
            replacement = module.get_base_layer()
        elif isinstance(module, ModulesToSaveWrapper):
            replacement = module.modules_to_save[name] if name in module.modules_to_save else module.original_module
        else:
            continue
        parent, _, child = module_name.rpartition(".")
        setattr(plain.get_submodule(parent) if parent else plain, child, replacement)
    for attr in ("adapter_records", "active_adapter_name", "peft_config"):
        plain.__dict__.pop(attr, None)
    for p in plain.parameters():
        p.requires_grad_(True)
    clear_caches(plain)
    return plain.eval()


def adapter_state_dict(model: nn.Module, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """The adapter's own tensors (peft's adapter state dict, or the selected base parameters)."""
    name = adapter_name or active_adapter(model)
    rec = records(model)[name]
    if rec.method in PEFT_METHODS:
        return dict(get_peft_model_state_dict(model, adapter_name=name))
    params = dict(model.named_parameters())
    return {n: params[n] for n in rec.targets}


def save_adapter(model: nn.Module, path: str | Path, adapter_name: str | None = None) -> Path:
    """Write one adapter alone to a safetensors file (its record in the metadata)."""
    from safetensors.torch import save_file

    name = adapter_name or active_adapter(model)
    rec = records(model)[name]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in adapter_state_dict(model, name).items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "record": json.dumps(asdict(rec))})
    tmp.replace(path)
    return path


def read_adapter(path: str | Path) -> tuple[AdapterRecord, dict[str, torch.Tensor]]:
    """The record and tensors of an adapter file written by `save_adapter`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such adapter file")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT or "record" not in meta:
        raise ValueError(f"{path}: not a medsamlite adapter (metadata 'format' is {meta.get('format')!r}, "
                         f"expected {FORMAT!r} with a 'record')")
    return AdapterRecord(**json.loads(meta["record"])), load_file(str(path))


def load_adapter(model: nn.Module, path: str | Path, adapter_name: str | None = None) -> nn.Module:
    """Apply the adapter saved at `path` to `model` (same encoder) and load its weights; it becomes active."""
    rec, tensors = read_adapter(path)
    if rec.encoder != model.config.encoder:
        raise ValueError(f"{path}: adapter was trained on encoder {rec.encoder!r} (record key 'encoder'), "
                         f"model '{model.config.name}' has {model.config.encoder!r}")
    name = adapter_name or rec.name
    if rec.method in PEFT_METHODS:
        apply(model, rec.method, targets=[re.escape(t) for t in rec.targets], train_decoder=rec.train_decoder,
              adapter_name=name, **rec.settings)
        result = set_peft_model_state_dict(model, tensors, adapter_name=name)
        unexpected = list(getattr(result, "unexpected_keys", []))
    else:
        if records(model):
            raise ValueError(f"{path}: a {rec.method} adapter replaces base parameters; load it into a model "
                             f"without adapters (this one has {sorted(records(model))})")
        unexpected = [k for k in tensors if k not in dict(model.named_parameters())]
        if not unexpected:
            model.load_state_dict(tensors, strict=False)
            _train_only(model, tensors)
            records(model)[name] = AdapterRecord(**{**asdict(rec), "name": name, "targets": sorted(tensors)})
            model.__dict__["active_adapter_name"] = name
    if unexpected:
        raise ValueError(f"{path}: tensors {unexpected[:5]} do not fit model '{model.config.name}'")
    return model
