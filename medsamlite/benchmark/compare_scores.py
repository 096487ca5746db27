"""Scores of a `bench compare` run (torch-free): a worker's event records become case rows scored under the
task's rules (`runtime.scoring`), a summary per run and means per modality."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.modality import parse_modality
from ..runtime.scoring import score_file


def score_case(record: dict[str, Any], gts_dir: Path) -> dict[str, Any]:
    """A case record with DSC / NSD under the task's rules, or a note where the case has no ground truth."""
    gts = gts_dir / record["case"]
    if not gts.is_file():
        return {**record, "note": "no ground truth"}
    score = score_file(record["segs"], gts)
    return {**record, "dsc": score.mean_dsc, "nsd": score.mean_nsd, "nsd_zeroed": score.nsd_zeroed}


@dataclass
class BenchResult:
    """Per-case rows, per-model summaries and the run's context."""

    cases: list[dict[str, Any]]
    models: list[dict[str, Any]]
    context: dict[str, Any]
    speed: list[dict[str, Any]] = field(default_factory=list)  # main job: encode time per registered encoder
    notes: list[str] = field(default_factory=list)  # runs skipped, and why


def collect(model: str, backend: str, records: list[dict[str, Any]], gts_dir: Path, run: str | None = None
            ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One run's summary and scored case rows from its worker's event records."""
    head = next((r for r in records if r["event"] == "model"), None)
    failure = next((r["error"] for r in records if r["event"] == "failed"), None)
    summary = {"run": run or model, "model": model, "backend": backend,
               "precision": head["precision"] if head else "n/a", "weights": head["weights"] if head else "n/a",
               "input_size": head["input_size"] if head else "", "error": failure or "",
               "load_seconds": head["load_seconds"] if head else float("nan"),
               "rss_after_load_mb": head["rss_after_load_mb"] if head else float("nan")}
    rows = []
    for record in (r for r in records if r["event"] == "case"):
        row = {"run": summary["run"], "weights": summary["weights"], "modality": parse_modality(record["case"]),
               "kind": record["case"][:2], **record}
        rows.append(score_case(row, gts_dir) if row["status"] == "ok" else row)
    return summarise(summary, rows), rows


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rows if r.get("status") == "ok" and key in r]
    return float(np.mean(values)) if values else float("nan")


def summarise(summary: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == "ok"]
    return {**summary, "cases": len(rows), "failed": len(rows) - len(ok), "dsc": _mean(ok, "dsc"),
            "nsd": _mean(ok, "nsd"), "seconds_mean": _mean(ok, "seconds"),
            "seconds_total": float(sum(r["seconds"] for r in ok)),
            "peak_rss_mb": max((r["peak_rss_mb"] for r in ok), default=float("nan"))}


def by_modality(result: BenchResult) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in result.cases:
        groups.setdefault((row["run"], row["modality"]), []).append(row)
    return [{"run": run, "model": rows[0]["model"], "weights": rows[0]["weights"], "modality": modality, "cases": len(rows),
             "dsc": _mean(rows, "dsc"), "nsd": _mean(rows, "nsd"), "seconds_mean": _mean(rows, "seconds"),
             "peak_rss_mb": max((r["peak_rss_mb"] for r in rows if r["status"] == "ok"), default=float("nan"))}
            for (run, modality), rows in groups.items()]
