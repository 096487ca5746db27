"""Lazy package exports: a public name is imported on first use, so torch stays unimported until needed."""
from __future__ import annotations

import importlib
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
