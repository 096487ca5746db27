"""Lazy package exports (a public name is imported on first use, so torch stays unimported until needed) and
the warning shims of moved modules."""
from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`; `names` maps a name to its module (absolute, or relative to it)."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = names[name]
        return getattr(importlib.import_module(module if module.startswith("medsamlite") else f"{package}.{module}"),
                       name)

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__


def moved(old: str, new: str | dict[str, str], removed_in: str
          ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for module `old` whose names moved: to module `new` (every public name), or
    each name to its module in a dict. Each use warns (DeprecationWarning) naming the new place."""

    def where(name: str) -> str | None:
        return new.get(name) if isinstance(new, dict) else (None if name.startswith("_") else new)

    def __getattr__(name: str) -> Any:
        module = where(name)
        value = getattr(importlib.import_module(module), name, _MISSING) if module else _MISSING
        if value is _MISSING:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(f"{old}.{name} moved to {module}.{name}; {old} goes in medsamlite {removed_in}",
                      DeprecationWarning, stacklevel=2)
        return value

    def __dir__() -> list[str]:
        if isinstance(new, dict):
            return sorted(new)
        return [n for n in dir(importlib.import_module(new)) if not n.startswith("_")]

    return __getattr__, __dir__


_MISSING = object()
