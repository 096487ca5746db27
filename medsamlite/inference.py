"""Deprecated: the old `medsamlite.inference` package's names are in `medsamlite.runtime` (this shim warns on
use and goes in 0.2.0)."""
from ._lazy import moved

__all__: list[str] = []  # nothing is supported here
_OLD = ("Case", "CaseError", "CaseResult", "Engine", "Predictor", "as_engine", "read_case", "write_segs")
__getattr__, __dir__ = moved(__name__, dict.fromkeys(_OLD, "medsamlite.runtime"), "0.2.0")
