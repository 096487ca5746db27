"""The reports of a `bench compare` run: `cases.csv`, `modalities.csv`, `models.csv`, `encoder_speed.csv`,
`context.json`, `results.md` (the summary tables) and the plots."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.metrics import ZERO_NSD_BELOW_DSC
from .compare_config import MAIN_MODEL, SPEED_BACKEND, SPEED_PRECISION, SPEED_REPEATS
from .compare_scores import BenchResult, by_modality
from .plots import plot_all
from .report import write_csv


CASE_FIELDS = ("run", "model", "backend", "weights", "case", "modality", "kind", "boxes", "status", "dsc", "nsd",
               "nsd_zeroed", "seconds", "encode", "decode", "peak_rss_mb", "rss_method", "note", "error")
MODALITY_FIELDS = ("run", "model", "weights", "modality", "cases", "dsc", "nsd", "seconds_mean", "peak_rss_mb")
MODEL_FIELDS = ("run", "model", "backend", "precision", "weights", "input_size", "cases", "failed", "dsc", "nsd", "seconds_mean",
                "seconds_total", "load_seconds", "rss_after_load_mb", "peak_rss_mb", "error")


SPEED_FIELDS = ("model", "input_size", "backend", "precision", "encode_ms", "ready_seconds", "compile_seconds",
                "compiled")


def _fmt(value: Any) -> Any:
    return f"{value:.4f}" if isinstance(value, float) else value


def _csv_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with their phase seconds as columns and floats to 4 decimals."""
    return [{k: _fmt(v) for k, v in {**(row.get("phases") or {}), **row}.items()} for row in rows]


def _accuracy(value: float, trained: bool) -> str:
    if not trained:
        return "—"  # random weights: a DSC would be noise, not accuracy
    return "n/a" if np.isnan(value) else f"{value:.3f}"


def markdown(result: BenchResult) -> str:
    """The summary tables: one row per model, then DSC (trained models) and runtime per modality."""
    ctx = result.context
    runs = (f"{MAIN_MODEL} on each backend" if ctx["main_job"]
            else f"backend {ctx['backend']} ({ctx['precision']})")
    lines = [f"CPU: {ctx['cpu']}, {ctx['cores']} cores, threads {ctx['threads']}; {runs}; "
             f"Python {ctx['python']}; {ctx['date']}.",
             f"Data: {'synthetic (medsamlite.data.synthetic)' if ctx['synthetic'] else ctx['data']}, "
             f"{len({r['case'] for r in result.cases})} cases.", "",
             "| run | weights | input | precision | DSC | NSD | s/case (mean) | s total | cold start s | peak RSS MB "
             "| failed |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in result.models:
        trained = m["weights"] == "trained"
        failed = f"{m['failed']} ({m['error']})" if m["error"] else str(m["failed"])
        lines.append(f"| {m['run']} | {m['weights']} | {m['input_size']} | {m['precision']} | "
                     f"{_accuracy(m['dsc'], trained)} | "
                     f"{_accuracy(m['nsd'], trained)} | {m['seconds_mean']:.2f} | {m['seconds_total']:.1f} | "
                     f"{m['load_seconds']:.1f} | {m['peak_rss_mb']:.0f} | {failed} |")
    modalities = by_modality(result)
    names = sorted({r["modality"] for r in modalities})
    cell = {(r["run"], r["modality"]): r for r in modalities}
    lines += [f"- {note}" for note in result.notes]
    lines += ["", "Per modality: DSC / NSD (trained weights only) and seconds per case.", "",
              "| run | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for m in result.models:
        trained = m["weights"] == "trained"
        cells = []
        for name in names:
            r = cell.get((m["run"], name))
            if r is None:
                cells.append("")
            elif trained:
                cells.append(f"{r['dsc']:.3f} / {r['nsd']:.3f} / {r['seconds_mean']:.2f} s")
            else:
                cells.append(f"{r['seconds_mean']:.2f} s")
        lines.append(f"| {m['run']} | " + " | ".join(cells) + " |")
    with_weights = ", ".join(dict.fromkeys(m["model"] for m in result.models if m["weights"] == "trained")) or "none"
    without = ", ".join(dict.fromkeys(m["model"] for m in result.models if m["weights"] != "trained"))
    lines += ["", f"Trained weights: {with_weights}" + (f"; {without}: random initialisation, benchmarked for speed "
                                                        "and memory only (their DSC/NSD are in cases.csv with "
                                                        "weights=random and mean nothing)." if without else "."),
              f"NSD: tolerance 2 mm, reported as 0 for a case whose DSC <= {ZERO_NSD_BELOW_DSC} (the task's rule). "
              "s/case: `Predictor.predict_file` (read, preprocess, encode, decode, postprocess, write); cold start: "
              "the worker process's imports, model build and weight loading (OpenVINO runs of the main job: opening the "
              "compiled folder, torch-free). Peak RSS: the worker process's own "
              "peak during each case (VmHWM reset per case), the table shows the largest."]
    if ctx["main_job"]:
        lines += speedups(result) + speed_table(result)
    return "\n".join(lines) + "\n"


def speedups(result: BenchResult) -> list[str]:
    """One line: each runtime row's s/case as a multiple of torch f32's."""
    base = next((m["seconds_mean"] for m in result.models if m["backend"] == "torch" and m["precision"] == "f32"
                 and not m["error"]), float("nan"))
    parts = [f"{m['backend']} {m['precision']} {base / m['seconds_mean']:.1f}x" for m in result.models
             if m["backend"] != "torch" and not m["error"] and m["seconds_mean"] > 0]
    return ["", f"Speed-up over torch f32 (s/case, {MAIN_MODEL}): " + ", ".join(parts) + "."] if parts else []


def speed_table(result: BenchResult) -> list[str]:
    """The speed-only table of every registered encoder (no DSC: most have random weights)."""
    if not result.speed:
        return ["", f"Encoder speed: skipped ({SPEED_BACKEND} is not installed)."]
    wall = result.context.get("compile_wall_seconds")
    lines = ["", f"Encoder speed, every registered model on {SPEED_BACKEND} {SPEED_PRECISION} (speed only: "
                 f"seeded random weights where a model has no trained ones; median of {SPEED_REPEATS} `encode` calls "
                 "after one warm-up; ready: opening the compiled folder; compile: this run's build into the cache, before "
                 "anything was timed"
                 + (f", {wall:.0f} s in all" if wall is not None else "") + "; the encoder alone, "
                 f"{MAIN_MODEL} with its decoder at each precision its runs use).", "",
             "| model | input | encode ms | ready s | compile s |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['input_size']} | {r['encode_ms']:.0f} | {r['ready_seconds']:.1f} | "
              f"{format(r['compile_seconds'], '.1f') if r.get('compiled') else 'cached'} |" for r in result.speed]
    return lines


def write_reports(result: BenchResult, out: Path) -> None:
    write_csv(_csv_rows(result.cases), out / "cases.csv", CASE_FIELDS)
    write_csv(_csv_rows(by_modality(result)), out / "modalities.csv", MODALITY_FIELDS)
    write_csv(_csv_rows(result.models), out / "models.csv", MODEL_FIELDS)
    if result.speed:
        write_csv(_csv_rows(result.speed), out / "encoder_speed.csv", SPEED_FIELDS)
    (out / "context.json").write_text(json.dumps(result.context, indent=2) + "\n")
    (out / "results.md").write_text("# medsamlite bench\n\n" + markdown(result))
    plot_all(result, by_modality(result), out)
