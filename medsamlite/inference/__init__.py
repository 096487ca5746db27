"""The task's inference pipeline (torch-free): case I/O, the `Engine` protocol and the `Predictor`."""
from .engine import Engine, as_engine
from .npz import Case, CaseError, read_case, write_segs
from .predictor import CaseResult, Predictor

__all__ = ["Case", "CaseError", "CaseResult", "Engine", "Predictor", "as_engine", "read_case", "write_segs"]
