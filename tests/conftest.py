"""Shared fixtures: the golden cases and their reference-layout synthetic weights."""
from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

GOLDEN_DIR = Path(os.environ.get("MEDSAMLITE_GOLDEN", Path(__file__).resolve().parents[1].parent / "shared" / "golden"))

# golden case folder -> registered model it proves
GOLDEN_CASES = {
    "litemedsam": "litemedsam",
    "efficientvit_sam_l0": "efficientvit_sam_l0",
    "efficientvit_sam_l1": "efficientvit_sam_l1",
    "repvit_m0_6": "repvit_m0_6_medsam",
    "swin_t_medsam": "swin_t_medsam",
}


def _synth_module():
    path = GOLDEN_DIR / "synth_weights.py"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the golden fixtures (../shared/golden) are required by the test suite")
    spec = importlib.util.spec_from_file_location("synth_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=None)
def golden_manifest(case: str) -> dict:
    return json.loads((GOLDEN_DIR / case / "manifest.json").read_text())


def golden_state_dict(case: str, seed: int = 0) -> dict:
    """Reference-layout weights of a golden case, exactly as the fixture's README builds them."""
    return _synth_module().synth_state_dict(golden_manifest(case), seed=seed)


@lru_cache(maxsize=None)
def golden_arrays(case: str, name: str = "golden.npz") -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / case / name) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN_DIR


def max_rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |a - e| / max |e|."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))
