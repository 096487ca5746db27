"""The adapter registry: each method module registers its settings dataclass and apply function (as peft's
`register_peft_method` does); `adapters.apply(model, method, ...)` reads it, so a new method is one module.

Two kinds of method: `PEFT` methods inject peft tuner layers (several named adapters on one base, peft's
state dicts, `set_adapter` and merging); `PARAMS` methods train a set of parameters of the model, either
its own (BitFit, norm, full, decoder) or those of modules they add (AdaptFormer, probe, spatial adapter).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

PEFT, PARAMS = "peft", "params"


@dataclass(frozen=True)
class Request:
    """What the caller of `apply` asked beside the method's own settings."""

    targets: list[str] | None  # regexes or module names; None: the method's default
    include_decoder: bool = False
    train_decoder: bool = False
    adapter_name: str = "default"


@dataclass(frozen=True)
class Applied:
    """What a method's apply did: the modules it wrapped (or parameters it chose) and, for PARAMS, what trains."""

    targets: list[str]
    parameters: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Method:
    """A registered adaptation method.

    `apply(model, settings, request)` changes `model` in place and returns `Applied`; `hook(settings)`
    returns the `after_step(model, optimizer)` callable its training needs (ARENA's proximal step), or None.
    `merges`: `adapters.merge` folds it into the base weights; `adds_modules`: loading re-applies it before
    the tensors; `peft_layout`: `save_pretrained` writes a folder `peft.PeftModel.from_pretrained` opens.
    """

    name: str
    settings: type
    apply: Callable[[Any, Any, Request], Applied]
    kind: str = PEFT
    merges: bool = True
    adds_modules: bool = False
    takes_targets: bool = True
    peft_layout: bool = False
    hook: Callable[[Any], Callable | None] | None = None
    description: str = ""


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add `method` to the registry (once per name)."""
    if method.name in _METHODS:
        raise ValueError(f"adaptation method {method.name!r} is already registered")
    if method.kind not in (PEFT, PARAMS):
        raise ValueError(f"method {method.name!r} has kind {method.kind!r}; expected {PEFT!r} or {PARAMS!r}")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method `name`."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown adaptation method {name!r}; expected one of {', '.join(_METHODS)}") from None


def list_methods(kind: str | None = None) -> list[str]:
    """Registered method names (of one kind), in registration order."""
    return [n for n, m in _METHODS.items() if kind is None or m.kind == kind]
