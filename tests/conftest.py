"""Shared fixtures: the golden cases, their reference-layout synthetic weights, one compile cache per session."""
from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

try:  # property-based tests (test_fuzz_readers.py): short with a fixed seed by default, `--hypothesis-profile long`
    from hypothesis import HealthCheck, settings
except ImportError:
    pass
else:
    _FUZZ = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
    settings.register_profile("ci", max_examples=40, derandomize=True, database=None, **_FUZZ)
    settings.register_profile("long", max_examples=2000, **_FUZZ)  # about 3 minutes on 2 cores
    settings.register_profile("soak", max_examples=15000, **_FUZZ)  # about 10 minutes on 2 cores
    settings.load_profile("ci")
GOLDEN_DIR = Path(os.environ.get("MEDSAMLITE_GOLDEN", REPO.parent / "shared" / "golden"))


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


def golden_case_for(name: str) -> str | None:
    """The golden fixture whose weights fit model `name`: its own, else one of a model with the same encoder."""
    import medsamlite

    spec = medsamlite.get_model_spec(name)
    if spec.golden:
        return spec.golden
    encoder = spec.config.encoder
    shared = next((s.golden for s in map(medsamlite.get_model_spec, medsamlite.list_models())
                   if s.golden and s.config.encoder == encoder), None)
    # a student medsamlite distils: its teacher's case (inputs and embeddings; the heads are the teacher's)
    return shared or (golden_case_for(spec.distilled_from) if spec.distilled_from else None)


_MODELS: dict = {}


def torch_model(name: str):
    """The registered model with its golden case's synthetic weights (a seeded default init without one); shared."""
    if name not in _MODELS:
        import torch

        import medsamlite

        case = golden_case_for(name)
        torch.manual_seed(0)
        spec = medsamlite.get_model_spec(name)
        if spec.distilled_from and case == golden_case_for(spec.distilled_from):
            _MODELS[name] = _student_of_golden_teacher(name, spec.distilled_from)
        else:
            _MODELS[name] = medsamlite.create_model(name, checkpoint=golden_state_dict(case) if case else None)
    return _MODELS[name]


def _student_of_golden_teacher(name: str, teacher: str):
    """A distilled student as its recipe starts it, from its teacher with golden weights."""
    from medsamlite.training.recipe import RECIPES, build_student

    recipe = next(r for r in RECIPES.values() if r.student == name)
    return build_student(recipe, torch_model(teacher)).eval()


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One compile cache for the session: a model is traced once, later compiles only convert or load."""
    path = tmp_path_factory.getbasetemp() / "medsamlite-export-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session", autouse=True)
def _session_compile_cache(cache_dir: Path):
    """Compiles that name no cache (the CLI's, the docs') go to the session's, not the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDSAMLITE_CACHE", str(cache_dir))
        yield


def max_rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |a - e| / max |e|."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))
