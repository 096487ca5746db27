"""Deprecated: moved to `medsamlite.runtime.metrics` (this shim warns on use and goes in 0.2.0)."""
from ._lazy import moved

__all__: list[str] = []  # nothing is supported here
__getattr__, __dir__ = moved(__name__, "medsamlite.runtime.metrics", "0.2.0")
