"""Compare models on the task's metrics, runtime and memory: run, score, and write CSV, markdown and plots.

Each model runs in its own process (`worker.py`): cold start (imports, build, weights) is timed apart
from the cases, and memory is that process's own. Scores are computed here, from the written `segs`,
with `medsamlite.runtime.scoring.score_file` under the task's rules; cases without ground truth are timed,
not scored. Models without trained weights run with a seeded random initialisation: their runtime and memory are real, their DSC/NSD mean nothing and are not
shown as accuracy (the CSVs keep them with `weights=random`).
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..constants import BACKENDS, find_cases
from ..runtime.metrics import ZERO_NSD_BELOW_DSC
from ..runtime.modality import parse_modality
from ..runtime.scoring import score_file
from .worker import WorkerSpec, write_spec


@dataclass(frozen=True)
class DataSetting:
    """The synthetic set generated when no --data is given."""

    modalities: tuple[str, ...]
    size: float
    depth: float  # 3D slice-count scale: slices, not pixels, decide a 3D case's runtime
    per_modality: int = 1


# the default run must finish in under 5 minutes on 2 cores with every model: 6 images + 3 volumes of 4 slices
DEFAULT_DATA = DataSetting(("CT", "MR", "PET", "US", "X-Ray", "Endoscopy", "Dermoscopy", "Fundus", "Microscope"),
                           size=0.5, depth=0.17)
SMALL_DATA = DataSetting(("CT", "US", "Microscope"), size=0.15, depth=0.2)
SMALL_MODELS = ("litemedsam", "repvit_m0_6_medsam")


@dataclass
class BenchConfig:
    """What `medsamlite bench` runs; None fields take the default (or --small) setting."""

    out: Path = Path("bench-results")
    models: Sequence[str] | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)
    backend: str = "torch"
    data: Path | None = None
    small: bool = False
    precision: str = "f32"
    threads: int | None = None
    seed: int = 0
    size: float | None = None  # synthetic image scale (default: the setting's)
    depth: float | None = None  # synthetic slice-count scale (default: the setting's)

    @property
    def data_setting(self) -> DataSetting:
        base = SMALL_DATA if self.small else DEFAULT_DATA
        return DataSetting(base.modalities, self.size or base.size, self.depth or base.depth, base.per_modality)

    def model_names(self) -> list[str]:
        if self.models:
            return list(self.models)
        if self.small:
            return list(SMALL_MODELS)
        from ..registry import list_models

        return list_models()


class BenchError(RuntimeError):
    """The benchmark cannot start (data folder, model names); one line."""


# data --------------------------------------------------------------------------------------------------

def prepare_data(config: BenchConfig) -> tuple[Path, list[Path]]:
    """The data folder and its cases: the given one (`imgs/`, ground truth in `gts/` where there is some), or
    a freshly generated synthetic set. Cases without ground truth are run and timed, not scored."""
    if config.data is None:
        from ..data.synthetic import write_dataset

        root = config.out / "data"
        setting = config.data_setting
        write_dataset(root, setting.modalities, setting.per_modality, setting.size, config.seed, setting.depth)
    else:
        root = Path(config.data)
        if not (root / "imgs").is_dir():
            raise BenchError(f"{root}: no 'imgs/' folder; expected imgs/*.npz (imgs, boxes, spacing) and, "
                             "to score them, gts/*.npz (gts)")
    cases = find_cases(root / "imgs").files
    if not cases:
        raise BenchError(f"{root / 'imgs'}: no .npz cases")
    return root, cases


# running -----------------------------------------------------------------------------------------------

def _worker_env() -> dict[str, str]:
    """The environment with this medsamlite first on the path, so the worker runs the same code as we do."""
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}


def run_model(config: BenchConfig, model: str, cases: list[Path]) -> list[dict[str, Any]]:
    """Run one model's worker process; returns its event records (an error record if it died)."""
    work = config.out / "runs" / model
    work.mkdir(parents=True, exist_ok=True)
    results = work / "events.jsonl"
    results.unlink(missing_ok=True)
    spec = WorkerSpec(model=model, cases=[str(c) for c in cases], out_dir=str(config.out / "segs" / model),
                      results=str(results), backend=config.backend, checkpoint=config.checkpoints.get(model),
                      precision=config.precision, threads=config.threads, seed=config.seed)
    with open(work / "worker.log", "w") as log:
        spec.launched = time.time()
        write_spec(spec, work / "spec.json")
        proc = subprocess.run([sys.executable, "-m", "medsamlite.benchmark.worker", str(work / "spec.json")],
                              stdout=log, stderr=subprocess.STDOUT, env=_worker_env())
    records = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    if proc.returncode != 0:
        tail = (work / "worker.log").read_text().strip().splitlines()[-1:] or ["no output"]
        records.append({"model": model, "backend": config.backend, "event": "failed",
                        "error": f"worker exited with {proc.returncode}: {tail[0]} (log: {work / 'worker.log'})"})
    return records


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


def machine_context(config: BenchConfig, data: Path) -> dict[str, Any]:
    from ..runtime.precision import cpu_summary

    return {"cpu": cpu_summary(), "cores": os.cpu_count(), "threads": config.threads or "default",
            "backend": config.backend, "precision": config.precision, "python": platform.python_version(),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "data": str(data),
            "synthetic": config.data is None, "small": config.small}


def collect(model: str, backend: str, records: list[dict[str, Any]], gts_dir: Path
            ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One model's summary and scored case rows from its worker's event records."""
    head = next((r for r in records if r["event"] == "model"), None)
    failure = next((r["error"] for r in records if r["event"] == "failed"), None)
    summary = {"model": model, "backend": backend, "weights": head["weights"] if head else "n/a",
               "input_size": head["input_size"] if head else "", "error": failure or "",
               "load_seconds": head["load_seconds"] if head else float("nan"),
               "rss_after_load_mb": head["rss_after_load_mb"] if head else float("nan")}
    rows = []
    for record in (r for r in records if r["event"] == "case"):
        row = {"weights": summary["weights"], "modality": parse_modality(record["case"]),
               "kind": record["case"][:2], **record}
        rows.append(score_case(row, gts_dir) if row["status"] == "ok" else row)
    return summarise(summary, rows), rows


def run_bench(config: BenchConfig, progress: Any = None) -> BenchResult:
    """Run every model over the data set, score the outputs and write the reports under `config.out`."""
    config.out.mkdir(parents=True, exist_ok=True)
    data, cases = prepare_data(config)
    rows, models = [], []
    for model in config.model_names():
        if progress:
            progress(f"{model}: {len(cases)} cases ({config.backend})")
        summary, model_rows = collect(model, config.backend, run_model(config, model, cases), data / "gts")
        rows += model_rows
        models.append(summary)
    result = BenchResult(rows, models, machine_context(config, data))
    write_reports(result, config.out)
    return result


# aggregation and reports ---------------------------------------------------------------------------------

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
        groups.setdefault((row["model"], row["modality"]), []).append(row)
    return [{"model": model, "weights": rows[0]["weights"], "modality": modality, "cases": len(rows),
             "dsc": _mean(rows, "dsc"), "nsd": _mean(rows, "nsd"), "seconds_mean": _mean(rows, "seconds"),
             "peak_rss_mb": max((r["peak_rss_mb"] for r in rows if r["status"] == "ok"), default=float("nan"))}
            for (model, modality), rows in groups.items()]


CASE_FIELDS = ("model", "backend", "weights", "case", "modality", "kind", "boxes", "status", "dsc", "nsd",
               "nsd_zeroed", "seconds", "encode", "decode", "peak_rss_mb", "rss_method", "note", "error")
MODALITY_FIELDS = ("model", "weights", "modality", "cases", "dsc", "nsd", "seconds_mean", "peak_rss_mb")
MODEL_FIELDS = ("model", "backend", "weights", "input_size", "cases", "failed", "dsc", "nsd", "seconds_mean",
                "seconds_total", "load_seconds", "rss_after_load_mb", "peak_rss_mb", "error")


def _fmt(value: Any) -> Any:
    return f"{value:.4f}" if isinstance(value, float) else value


def write_csv(path: Path, rows: list[dict[str, Any]], fields: Sequence[str]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            phases = row.get("phases") or {}
            writer.writerow({k: _fmt(v) for k, v in {**phases, **row}.items()})
    return path


def _accuracy(value: float, trained: bool) -> str:
    if not trained:
        return "—"  # random weights: a DSC would be noise, not accuracy
    return "n/a" if np.isnan(value) else f"{value:.3f}"


def markdown(result: BenchResult) -> str:
    """The summary tables: one row per model, then DSC (trained models) and runtime per modality."""
    ctx = result.context
    lines = [f"CPU: {ctx['cpu']}, {ctx['cores']} cores, threads {ctx['threads']}; backend {ctx['backend']} "
             f"({ctx['precision']}); Python {ctx['python']}; {ctx['date']}.",
             f"Data: {'synthetic (medsamlite.data.synthetic)' if ctx['synthetic'] else ctx['data']}, "
             f"{len({r['case'] for r in result.cases})} cases.", "",
             "| model | weights | input | DSC | NSD | s/case (mean) | s total | cold start s | peak RSS MB | failed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in result.models:
        trained = m["weights"] == "trained"
        failed = f"{m['failed']} ({m['error']})" if m["error"] else str(m["failed"])
        lines.append(f"| {m['model']} | {m['weights']} | {m['input_size']} | {_accuracy(m['dsc'], trained)} | "
                     f"{_accuracy(m['nsd'], trained)} | {m['seconds_mean']:.2f} | {m['seconds_total']:.1f} | "
                     f"{m['load_seconds']:.1f} | {m['peak_rss_mb']:.0f} | {failed} |")
    modalities = by_modality(result)
    names = sorted({r["modality"] for r in modalities})
    cell = {(r["model"], r["modality"]): r for r in modalities}
    lines += ["", "Per modality: DSC / NSD (trained weights only) and seconds per case.", "",
              "| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for m in result.models:
        trained = m["weights"] == "trained"
        cells = []
        for name in names:
            r = cell.get((m["model"], name))
            if r is None:
                cells.append("")
            elif trained:
                cells.append(f"{r['dsc']:.3f} / {r['nsd']:.3f} / {r['seconds_mean']:.2f} s")
            else:
                cells.append(f"{r['seconds_mean']:.2f} s")
        lines.append(f"| {m['model']} | " + " | ".join(cells) + " |")
    with_weights = ", ".join(m["model"] for m in result.models if m["weights"] == "trained") or "none"
    without = ", ".join(m["model"] for m in result.models if m["weights"] != "trained")
    lines += ["", f"Trained weights: {with_weights}" + (f"; {without}: random initialisation, benchmarked for speed "
                                                        "and memory only (their DSC/NSD are in cases.csv with "
                                                        "weights=random and mean nothing)." if without else "."),
              f"NSD: tolerance 2 mm, reported as 0 for a case whose DSC <= {ZERO_NSD_BELOW_DSC} (the task's rule). "
              "s/case: `Predictor.predict_file` (read, preprocess, encode, decode, postprocess, write); cold start: "
              "the worker process's imports, model build and weight loading. Peak RSS: the worker process's own "
              "peak during each case (VmHWM reset per case), the table shows the largest."]
    return "\n".join(lines) + "\n"


def write_reports(result: BenchResult, out: Path) -> None:
    write_csv(out / "cases.csv", result.cases, CASE_FIELDS)
    write_csv(out / "modalities.csv", by_modality(result), MODALITY_FIELDS)
    write_csv(out / "models.csv", result.models, MODEL_FIELDS)
    (out / "context.json").write_text(json.dumps(result.context, indent=2) + "\n")
    (out / "results.md").write_text("# medsamlite bench\n\n" + markdown(result))
    from .plots import plot_all

    plot_all(result, by_modality(result), out)


# the `medsamlite bench compare` suite (the default) -------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="results folder (default ./bench-results)")
    parser.add_argument("--models", nargs="+", help="registered model names (default: all; --small: litemedsam "
                                                    "and repvit_m0_6_medsam)")
    parser.add_argument("--checkpoints", nargs="+", default=[], metavar="MODEL=PATH",
                        help="trained weights for a model (any supported layout); without them a model with no "
                             "packaged weights runs with random weights, for speed only")
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    parser.add_argument("--data", type=Path, help="a folder with imgs/*.npz and gts/*.npz (default: generate a "
                                                  "synthetic set under OUT/data)")
    parser.add_argument("--small", action="store_true", default=os.environ.get("MEDSAMLITE_BENCH_SMALL") == "1",
                        help="tiny synthetic cases and two models, for CI (also MEDSAMLITE_BENCH_SMALL=1)")
    parser.add_argument("--precision", choices=("f32", "bf16", "auto"), default="f32")
    parser.add_argument("--threads", type=int, help="CPU threads of the runtime (default: its own choice)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data and random-weight initialisation")
    parser.add_argument("--size", type=float, help="synthetic image scale (default 0.5, --small 0.15; 1.0 = realistic)")
    parser.add_argument("--depth", type=float, help="synthetic 3D slice-count scale (default 0.17: 4 slices; 1.0 = "
                                                    "16-24 slices)")


def parse_checkpoints(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        model, sep, path = item.partition("=")
        if not sep or not model or not path:
            raise ValueError(f"--checkpoints {item!r}; expected MODEL=PATH")
        if not Path(path).exists():
            raise ValueError(f"--checkpoints {item!r}: {path}: no such file")
        pairs[model] = path
    return pairs


def run(args: argparse.Namespace) -> int:
    try:
        checkpoints = parse_checkpoints(args.checkpoints)
        config = BenchConfig(out=args.out, models=args.models, checkpoints=checkpoints, backend=args.backend,
                             data=args.data, small=args.small, precision=args.precision, threads=args.threads,
                             seed=args.seed, size=args.size, depth=args.depth)
        unknown = sorted(set(checkpoints) - set(config.model_names()))
        if unknown:
            raise ValueError(f"--checkpoints names models that are not benchmarked: {', '.join(unknown)}")
        if args.models:
            from ..registry import list_models

            missing = [m for m in args.models if m not in list_models()]
            if missing:
                raise ValueError(f"unknown model(s) {', '.join(missing)}; expected some of {', '.join(list_models())}")
        start = time.perf_counter()
        result = run_bench(config, progress=lambda message: print(f"bench: {message}", file=sys.stderr, flush=True))
    except (BenchError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(markdown(result))
    print(f"bench: {time.perf_counter() - start:.0f} s; results in {args.out}/ (results.md, cases.csv, "
          "modalities.csv, models.csv, *.png)", file=sys.stderr)
    failed = sum(m["failed"] for m in result.models) + sum(bool(m["error"]) for m in result.models)
    return 1 if failed else 0
