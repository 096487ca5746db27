"""`apply`, `merge`, `set_adapter`, `save_adapter`, `load_adapter`: one switch between adaptation methods.

Each method registers itself (`adapters.registry`); this module reads the registry. A model carries either
peft adapters (PEFT methods; several named ones on one base) or one PARAMS method (a parameter selection or
added modules). What was applied is recorded on the model (`model.adapter_records`) so that it can be saved
alone, re-applied on a fresh model and merged.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import ModulesToSaveWrapper
from torch import nn

from ..runtime.files import atomic_file

# each module registers its method on import (the order is the order `list_methods` reports)
from . import lora, arena, adalora, ia3, vera, bitfit, norm, presets, adaptformer, probe, spatial  # noqa: F401
from . import tuners
from .registry import PARAMS, PEFT, Method, Request, get_method, list_methods
from .targets import DECODER, patterns_of
from .wrappers import Wrapped, added_parameters

METHODS = tuple(list_methods())
PEFT_METHODS = tuple(list_methods(PEFT))
FORMAT = "medsamlite-adapter"
DEFAULT = "default"


@dataclass
class AdapterRecord:
    """What `apply` did: enough to apply the same adapter to a fresh model and load its weights."""

    method: str
    name: str
    model: str
    encoder: str
    targets: list[str] = field(default_factory=list)  # wrapped modules (peft, added modules) or chosen parameters
    settings: dict[str, Any] = field(default_factory=dict)
    train_decoder: bool = False
    parameters: list[str] = field(default_factory=list)  # PARAMS methods: the trained (saved) parameters


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
    """Trainable count of the active (or named) adapter; `total` counts the base model's parameters."""
    rec = records(model)[adapter or active_adapter(model)]
    own = tuners.adapter_parameter_pattern(model, others=True)
    added = set(added_parameters(model))
    total = sum(p.numel() for n, p in model.named_parameters() if not own.search(n) and n not in added)
    return AdapterSummary(rec.method, rec.name, trainable_parameters(model), total, len(rec.targets))


def active_adapter(model: nn.Module) -> str:
    """Name of the adapter the model currently routes through."""
    recs = records(model)
    if not recs:
        raise ValueError(f"model '{model.config.name}' has no adapter applied")
    return model.__dict__.get("active_adapter_name", next(iter(recs)))


def _settings(method: Method, config: dict[str, Any]):
    try:
        return method.settings(**config)
    except TypeError:
        allowed = sorted(method.settings.__dataclass_fields__)
        raise TypeError(f"unknown settings {sorted(set(config) - set(allowed))} for method {method.name!r}; "
                        f"expected some of {allowed}") from None


def apply(model: nn.Module, method: str, targets: str | Iterable[str] | None = None, include_decoder: bool = False,
          train_decoder: bool = False, adapter_name: str = DEFAULT, **config: Any) -> nn.Module:
    """Make only `method`'s parameters trainable in `model` (in place) and return it.

    method: any registered name (`list_methods()`; docs/adapters.md has the table). `targets`: regexes or
    module names for the methods that take them (default per encoder family). `include_decoder` adds the
    mask decoder's attention/MLP layers (its biases, its norms); `train_decoder` trains the whole decoder
    too (a copy per adapter for PEFT methods). `config`: the method's settings (`r`, `alpha`, ...).
    `summary(model)` reports the count.
    """
    spec = get_method(method)
    settings = _settings(spec, config)
    recs = records(model)
    if adapter_name in recs:
        raise ValueError(f"model already has an adapter named {adapter_name!r}; pick another adapter_name")
    kinds = {r.method for r in recs.values()}
    if kinds and not (kinds == {method} and spec.kind == PEFT):
        raise ValueError(f"model already carries {sorted(kinds)} adapters; several named adapters are supported "
                         f"only for one peft method ({', '.join(PEFT_METHODS)}), not {method!r} on top")
    if targets is not None and not spec.takes_targets:
        raise TypeError(f"method {method!r} takes no targets (it acts on a fixed part of the model)")
    applied = spec.apply(model, settings, Request(patterns_of(targets), include_decoder, train_decoder, adapter_name))
    rec = AdapterRecord(method, adapter_name, model.config.name, model.config.encoder, list(applied.targets),
                        asdict(settings), train_decoder)
    if spec.kind == PARAMS:
        rec.parameters = list(applied.parameters) or added_parameters(model)
        if train_decoder:
            rec.parameters += [n for n, _ in model.named_parameters() if n.startswith(DECODER + ".")
                               and n not in rec.parameters]
        _train_only(model, rec.parameters)
    recs[adapter_name] = rec
    model.__dict__["active_adapter_name"] = adapter_name
    return model


def _train_only(model: nn.Module, names: Iterable[str]) -> None:
    chosen = set(names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)


def after_step(model: nn.Module, adapter: str | None = None) -> Callable | None:
    """The `after_step(model, optimizer)` hook the active (or named) adapter's training needs, or None."""
    rec = records(model)[adapter or active_adapter(model)]
    spec = get_method(rec.method)
    return spec.hook(spec.settings(**rec.settings)) if spec.hook else None


def set_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Route the model through the named peft adapter (and its decoder copy); only it trains."""
    rec = records(model).get(adapter_name)
    if rec is None:
        raise KeyError(f"no adapter {adapter_name!r}; the model has {sorted(records(model))}")
    if get_method(rec.method).kind == PEFT:
        tuners.activate(model, adapter_name)
    model.__dict__["active_adapter_name"] = adapter_name
    return model


def merge(model: nn.Module, adapter: str | None = None) -> nn.Module:
    """A plain copy of `model` with the active (or named) adapter folded into the base weights.

    peft layers become their base layers (peft's safe merge), the adapter's decoder copy replaces the
    shared decoder, added modules fold into the layers they wrap; `model` is unchanged. Methods that cannot
    merge (a nonlinear addition) raise: export the adapted model as it is (`export.compile(model)`).
    """
    name = adapter or active_adapter(model)
    if name not in records(model):
        raise KeyError(f"no adapter {name!r}; the model has {sorted(records(model))}")
    method = records(model)[name].method
    if not get_method(method).merges:
        raise ValueError(f"method {method!r} cannot be merged into the base weights (its added module is "
                         "nonlinear); export the adapted model as it is: medsamlite.export.compile(model)")
    return _plain(model, name)


def unload(model: nn.Module) -> nn.Module:
    """A plain copy of the shared base of `model`, without peft adapters or added modules (selections stay)."""
    return _plain(model, None)


def _plain(model: nn.Module, name: str | None) -> nn.Module:
    from ..checkpoints import clear_caches
    from .wrappers import replace

    plain = copy.deepcopy(model)
    for module_name, module in list(plain.named_modules()):
        if isinstance(module, BaseTunerLayer):
            if name is not None:
                tuners.merge_layer(module, name)
            replacement = module.get_base_layer()
        elif isinstance(module, ModulesToSaveWrapper):
            replacement = module.modules_to_save[name] if name in module.modules_to_save else module.original_module
        elif isinstance(module, Wrapped):
            replacement = module.merged() if name is not None else module.base
        else:
            continue
        replace(plain, module_name, replacement)
    for attr in ("adapter_records", "active_adapter_name", "peft_config"):
        plain.__dict__.pop(attr, None)
    for p in plain.parameters():
        p.requires_grad_(True)
    clear_caches(plain)
    return plain.eval()


def adapter_state_dict(model: nn.Module, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """The adapter's own tensors (peft's adapter state dict, or the trained parameters)."""
    name = adapter_name or active_adapter(model)
    rec = records(model)[name]
    if get_method(rec.method).kind == PEFT:
        return tuners.state_dict(model, name)
    params = dict(model.named_parameters())
    return {n: params[n] for n in rec.parameters or rec.targets}


def save_adapter(model: nn.Module, path: str | Path, adapter_name: str | None = None) -> Path:
    """Write one adapter alone to a safetensors file (its record in the metadata)."""
    from safetensors.torch import save

    name = adapter_name or active_adapter(model)
    rec = records(model)[name]
    tensors = {k: v.detach().contiguous().cpu() for k, v in adapter_state_dict(model, name).items()}
    with atomic_file(path) as f:
        f.write(save(tensors, metadata={"format": FORMAT, "record": json.dumps(asdict(rec))}))
    return Path(path)


def save_pretrained(model: nn.Module, directory: str | Path, adapter_name: str | None = None) -> Path:
    """Write one peft adapter in peft's layout, which `peft.PeftModel.from_pretrained(base, directory)` opens.

    `adapter_config.json` + `adapter_model.safetensors` (peft's files) and `medsamlite_adapter.json` (the
    record, for `load_adapter`). Methods without a peft layout (ARENA's custom layers, PARAMS methods) raise.
    """
    name = adapter_name or active_adapter(model)
    rec = records(model)[name]
    if not get_method(rec.method).peft_layout:
        layouts = [m for m in list_methods(PEFT) if get_method(m).peft_layout]
        raise ValueError(f"method {rec.method!r} has no peft layout (only {', '.join(layouts)}); "
                         "use save_adapter(model, 'adapter.safetensors')")
    return tuners.save_pretrained(model, Path(directory), name, asdict(rec))


def read_adapter(path: str | Path) -> tuple[AdapterRecord, dict[str, torch.Tensor]]:
    """The record and tensors of an adapter file (`save_adapter`) or folder (`save_pretrained`)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        record, tensors = tuners.read_pretrained(path)
        return AdapterRecord(**record), tensors
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
    spec = get_method(rec.method)
    if spec.kind == PEFT or spec.adds_modules:
        targets = [re.escape(t) for t in rec.targets] if spec.takes_targets else None
        apply(model, rec.method, targets=targets, train_decoder=rec.train_decoder, adapter_name=name, **rec.settings)
    if spec.kind == PEFT:
        unexpected = tuners.load_state_dict(model, tensors, name)
    else:
        if records(model) and not spec.adds_modules:
            raise ValueError(f"{path}: a {rec.method} adapter replaces base parameters; load it into a model "
                             f"without adapters (this one has {sorted(records(model))})")
        unexpected = [k for k in tensors if k not in dict(model.named_parameters())]
        if not unexpected:
            model.load_state_dict(tensors, strict=False)
            if not spec.adds_modules:
                _train_only(model, tensors)
                records(model)[name] = AdapterRecord(**{**asdict(rec), "name": name, "parameters": sorted(tensors)})
                model.__dict__["active_adapter_name"] = name
    if unexpected:
        raise ValueError(f"{path}: tensors {unexpected[:5]} do not fit model '{model.config.name}'")
    return model
