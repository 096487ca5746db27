"""PNG plots of a benchmark run (matplotlib, imported lazily, Agg backend)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .compare import BenchResult


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def runtime_vs_dsc(result: "BenchResult", path: Path) -> Path:
    """Mean seconds per case against mean DSC, one point per model; random-weight models sit on a separate row."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    untrained = 0
    for m in result.models:
        if m["weights"] == "trained":
            ax.scatter(m["seconds_mean"], m["dsc"], s=60)
            ax.annotate(m["model"], (m["seconds_mean"], m["dsc"]), textcoords="offset points", xytext=(5, 5))
        else:  # speed only: drawn below the axis of accuracy, never as a DSC; labels staggered to stay legible
            ax.scatter(m["seconds_mean"], -0.05, marker="x", color="grey")
            ax.annotate(m["model"], (m["seconds_mean"], -0.05), textcoords="offset points",
                        xytext=(4, -10 - 9 * (untrained % 5)), fontsize=7, color="grey")
            untrained += 1
    ax.axhline(0, color="lightgrey", lw=0.8)
    ax.set_ylim(-0.3, 1.0)
    ax.set_xlabel("seconds per case (mean)")
    ax.set_ylabel("DSC (mean over cases)")
    ax.set_title(f"runtime vs DSC — grey x: random weights (speed only)\n{result.context['cpu']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def modality_bars(rows: list[dict[str, Any]], key: str, models: list[str], title: str, path: Path) -> Path:
    """Grouped bars of `key` per modality, one bar per model."""
    plt = _pyplot()
    modalities = sorted({r["modality"] for r in rows})
    value = {(r["model"], r["modality"]): r[key] for r in rows}
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(modalities) + 2), 4.2))
    x = np.arange(len(modalities))
    for i, model in enumerate(models):
        ax.bar(x + i * width - 0.4 + width / 2, [value.get((model, m), np.nan) for m in modalities], width, label=model)
    ax.set_xticks(x, modalities, rotation=30, ha="right")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(result: "BenchResult", modality_rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """runtime_vs_dsc.png, modality_dsc.png (trained models) and modality_seconds.png (every model)."""
    trained = [m["model"] for m in result.models if m["weights"] == "trained"]
    paths = [runtime_vs_dsc(result, out / "runtime_vs_dsc.png"),
             modality_bars(modality_rows, "seconds_mean", [m["model"] for m in result.models],
                           f"seconds per case by modality\n{result.context['cpu']}", out / "modality_seconds.png")]
    if trained:
        paths.append(modality_bars([r for r in modality_rows if r["model"] in trained], "dsc", trained,
                                   "DSC by modality (trained weights only)", out / "modality_dsc.png"))
    return paths
