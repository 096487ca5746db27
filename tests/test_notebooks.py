"""The notebooks run end to end on their small setting and write their figures.

Figures go to a temporary folder; `MEDSAMLITE_FIGURES=$PWD/docs/img pytest tests/test_notebooks.py`
refreshes the ones under docs/img.
"""
from __future__ import annotations

import os
from pathlib import Path

import nbclient  # with nbformat and ipykernel: the notebook tests' own dependencies
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {
    "01_quickstart.ipynb": ["quickstart_overlays.png"],
    "02_encoder_ablation.ipynb": ["encoder_ablation.png"],
    "03_adapter_ablation.ipynb": ["adapter_ablation.png", "arena_ranks.png", "fewshot.png"],
    "04_interactive.ipynb": ["interactive_rounds.png"],
}


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_notebook_runs_and_writes_its_figures(name: str, tmp_path, monkeypatch) -> None:
    figures = Path(os.environ.get("MEDSAMLITE_FIGURES") or tmp_path / "figures")
    monkeypatch.setenv("MEDSAMLITE_NOTEBOOK_SMALL", "1")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the notebooks' scratch folders go when the test passes
    monkeypatch.setenv("MEDSAMLITE_FIGURES", str(figures))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for png in NOTEBOOKS[name]:
        (figures / png).unlink(missing_ok=True)
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()  # raises CellExecutionError naming the failing cell
    for png in NOTEBOOKS[name]:
        assert (figures / png).stat().st_size > 10_000, f"{name} did not write {png}"
