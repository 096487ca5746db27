"""PNG plots of a benchmark run (matplotlib, imported lazily, Agg backend)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np


class RunResult(Protocol):
    """What the plots read of a run (`compare_scores.BenchResult`; a protocol, so plots import no part of the compare suite)."""

    models: list[dict[str, Any]]
    speed: list[dict[str, Any]]
    context: dict[str, Any]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Write `fig` to `path` as a PNG (tight layout, 110 dpi) and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def runtime_vs_dsc(result: RunResult, path: Path) -> Path:
    """Mean seconds per case against mean DSC, one point per trained run; random-weight runs are left out."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    trained = [m for m in result.models if m["weights"] == "trained" and not np.isnan(m["dsc"])]
    for i, m in enumerate(trained):
        ax.scatter(m["seconds_mean"], m["dsc"], s=60)
        ax.annotate(m["run"], (m["seconds_mean"], m["dsc"]), textcoords="offset points", xytext=(5, 5 - 11 * (i % 3)),
                    fontsize=8)
    ax.set_xlim(left=0)
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("seconds per case (mean)")
    ax.set_ylabel("DSC (mean over cases)")
    skipped = len(result.models) - len(trained)
    note = f" — {skipped} random-weight run(s) not drawn (speed only)" if skipped else ""
    ax.set_title(f"runtime vs DSC, trained weights{note}\n{result.context['cpu']}", fontsize=8)
    return save_figure(fig, path)


def encoder_speed(rows: list[dict[str, Any]], path: Path, cpu: str) -> Path:
    """Horizontal bars: median encode ms of every registered encoder (speed only, no accuracy)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 1.6))
    labels = [f"{r['model']} ({r['input_size']})" for r in rows]
    ax.barh(labels, [r["encode_ms"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['encode_ms']:.0f}", (r["encode_ms"], i), textcoords="offset points", xytext=(3, -3),
                    fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"encode ms ({rows[0]['backend']} {rows[0]['precision']}, median)")
    ax.set_title(f"encoder speed (speed only: random weights have no DSC)\n{cpu}", fontsize=8)
    return save_figure(fig, path)


def modality_bars(rows: list[dict[str, Any]], key: str, models: list[str], title: str, path: Path) -> Path:
    """Grouped bars of `key` per modality, one bar per run."""
    plt = _pyplot()
    modalities = sorted({r["modality"] for r in rows})
    value = {(r["run"], r["modality"]): r[key] for r in rows}
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(modalities) + 2), 4.2))
    x = np.arange(len(modalities))
    for i, model in enumerate(models):
        ax.bar(x + i * width - 0.4 + width / 2, [value.get((model, m), np.nan) for m in modalities], width, label=model)
    ax.set_xticks(x, modalities, rotation=30, ha="right")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_all(result: RunResult, modality_rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """runtime_vs_dsc.png, modality_dsc.png (trained runs), modality_seconds.png (every run) and, in the main
    job, encoder_speed.png."""
    trained = [m["run"] for m in result.models if m["weights"] == "trained"]
    paths = [runtime_vs_dsc(result, out / "runtime_vs_dsc.png"),
             modality_bars(modality_rows, "seconds_mean", [m["run"] for m in result.models],
                           f"seconds per case by modality\n{result.context['cpu']}", out / "modality_seconds.png")]
    if trained:
        paths.append(modality_bars([r for r in modality_rows if r["run"] in trained], "dsc", trained,
                                   "DSC by modality (trained weights only)", out / "modality_dsc.png"))
    if result.speed:
        paths.append(encoder_speed(result.speed, out / "encoder_speed.png", result.context["cpu"]))
    return paths


def agreement_curves(curves: dict[str, list[dict[str, Any]]], path: Path, title: str = "") -> Path:
    """Agreement with the teacher against training minutes, per student recipe and part (`recipe.agreement_curve`)."""
    plt = _pyplot()
    parts = [k for k in next(iter(curves.values()))[0] if isinstance(next(iter(curves.values()))[0][k], dict)]
    fig, axes = plt.subplots(1, len(parts), figsize=(4.2 * len(parts), 3.8), sharey=True, squeeze=False)
    for ax, part in zip(axes[0], parts):
        for name, points in curves.items():
            ax.plot([p["train_minutes"] for p in points], [p[part]["mean"] for p in points], marker="o", label=name)
            ax.plot([p["train_minutes"] for p in points], [p[part]["worst"] for p in points], linestyle=":",
                    color=ax.lines[-1].get_color())
        ax.set_title(part, fontsize=9)
        ax.set_xlabel("training minutes")
        ax.set_ylim(0, 1.0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("agreement (mean; dotted: worst case)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=8)
    return save_figure(fig, path)
