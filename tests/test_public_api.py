"""The supported surface: every name in every `__all__` imports; a moved name works and warns naming its new place."""
from __future__ import annotations

import importlib
import re
import warnings
from pathlib import Path

import pytest

import medsamlite

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["medsamlite", *sorted(f"medsamlite.{p.parent.name}" for p in (ROOT / "medsamlite").glob("*/__init__.py"))]
# old name -> the object now behind it
MOVED = {
    "medsamlite.inference": {name: f"medsamlite.runtime.{name}" for name in
                             ("Case", "CaseError", "CaseResult", "Engine", "Predictor", "as_engine", "read_case",
                              "write_segs")},
    "medsamlite.metrics": {name: f"medsamlite.runtime.metrics.{name}" for name in
                           ("dsc", "nsd", "evaluate_case", "CaseScore", "TOLERANCE")},
    "medsamlite.preprocess": {name: f"medsamlite.runtime.preprocess.{name}" for name in
                              ("preprocess_image", "scale_boxes", "postprocess_logits")},
}


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_in_all_imports(package: str) -> None:
    module = importlib.import_module(package)
    names = module.__all__
    assert len(set(names)) == len(names), f"{package}.__all__ repeats a name"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the supported surface never warns
        for name in names:
            assert getattr(module, name) is not None, f"{package}.{name}"


@pytest.mark.parametrize("package", PACKAGES)
def test_the_reference_page_documents_every_name(package: str) -> None:
    listed = set(re.findall(r"^::: [\w.]+\.(\w+)$", (ROOT / "docs" / "api.md").read_text(), re.M))
    missing = set(importlib.import_module(package).__all__) - listed
    assert not missing, f"docs/api.md lacks {package}: {sorted(missing)}"


def test_version_is_the_changelogs_latest_release() -> None:
    from importlib.metadata import version

    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert released and released[0] == medsamlite.__version__ == version("medsamlite")


@pytest.mark.parametrize("old", sorted(MOVED))
def test_moved_names_warn_and_name_the_new_place(old: str) -> None:
    module = importlib.import_module(old)
    for name, new in MOVED[old].items():
        with pytest.warns(DeprecationWarning, match=re.escape(f"{old}.{name} moved to {new}")):
            assert getattr(module, name) is _resolve(new)
    with pytest.raises(AttributeError, match="no_such_name"):
        module.no_such_name
    assert set(MOVED[old]) <= set(dir(module))


def test_code_written_against_the_old_layout_runs() -> None:
    import numpy as np

    with pytest.warns(DeprecationWarning, match="medsamlite.runtime.metrics.dsc"):
        from medsamlite.metrics import dsc
    with pytest.warns(DeprecationWarning, match="medsamlite.runtime.Predictor"):
        from medsamlite.inference import Predictor
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:6] = True
    assert dsc(mask, mask) == 1.0
    assert Predictor.__module__ == "medsamlite.runtime.predictor"


def test_command_line_help_is_for_users_and_reports_the_version(capsys) -> None:
    from medsamlite.cli import main

    for flag in ("--version", "--help"):
        with pytest.raises(SystemExit) as done:
            main([flag])
        assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"medsamlite {medsamlite.__version__}\n")
    assert "add_arguments" not in out and "medsamlite predict -i" in out
