"""Compare models on the task's metrics, runtime and memory: run, score, and write CSV, markdown and plots.

The main job (`medsamlite bench` without `--models`) shows what is real: the trained model (litemedsam) on
each backend and precision this machine offers (torch f32, OpenVINO f32, OpenVINO at the runtime's default
precision) with DSC, NSD and time per case, then the encode speed of every registered encoder on OpenVINO
f32 (compiled through the compile cache, seeded random weights where none are trained: speed only, no DSC).
`--models ...` is the full comparison: every listed model on one backend, DSC and all.

Each run (model, backend, precision) runs in its own process (`worker.py`): cold start (imports, build, weights;
the main job's OpenVINO runs open their compiled folder torch-free, as an exported model runs) is timed apart from the cases, and memory is that process's own. Scores are computed here, from the written `segs`,
with `medsamlite.runtime.scoring.score_file` under the task's rules; cases without ground truth are timed,
not scored. Models without trained weights run with a seeded random initialisation: their runtime and memory are real, their DSC/NSD mean nothing and are not
shown as accuracy (the CSVs keep them with `weights=random`).
"""
from __future__ import annotations

import argparse
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
from ..extras import missing
from ..runtime.metrics import ZERO_NSD_BELOW_DSC
from ..runtime.modality import parse_modality
from ..runtime.scoring import score_file
from .plots import plot_all
from .report import write_csv
from .worker import WorkerSpec, worker_env, write_spec


@dataclass(frozen=True)
class DataSetting:
    """The synthetic set generated when no --data is given."""

    modalities: tuple[str, ...]
    size: float
    depth: float  # 3D slice-count scale: slices, not pixels, decide a 3D case's runtime
    per_modality: int = 1


# 4 images (one with 30 boxes) + a volume of 3 slices at 0.35 of the realistic size: the main job runs them
# three times, within 90 s with its compiles (`bench --models` on `--data` for every modality)
DEFAULT_DATA = DataSetting(("CT", "US", "X-Ray", "Endoscopy", "Microscope"), size=0.35, depth=0.125)
SMALL_DATA = DataSetting(("CT", "US", "Microscope"), size=0.15, depth=0.2)
MAIN_MODEL = "litemedsam"  # the one model with packaged trained weights
# (backend, precision) rows of the main job; "auto" is the runtime's default (bf16 where the CPU has it)
MAIN_RUNS = (("torch", "f32"), ("openvino", "f32"), ("openvino", "auto"))
SPEED_BACKEND, SPEED_PRECISION, SPEED_REPEATS = "openvino", "f32", 3


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
    def main_job(self) -> bool:
        """No --models: the trained model per backend plus the speed chart of every encoder."""
        return not self.models

    @property
    def data_setting(self) -> DataSetting:
        base = SMALL_DATA if self.small else DEFAULT_DATA
        return DataSetting(base.modalities, self.size or base.size, self.depth or base.depth, base.per_modality)

    def model_names(self) -> list[str]:
        """The models run over the cases (the main job: the trained one)."""
        return list(self.models) if self.models else [MAIN_MODEL]

    def runs(self) -> tuple[list[tuple[str, str, str]], list[str]]:
        """(model, backend, precision) per run, and a note for each run skipped (backend not installed)."""
        if not self.main_job:
            return [(m, self.backend, self.precision) for m in self.model_names()], []
        runs, notes = [], []
        for backend, precision in MAIN_RUNS:
            if backend == "openvino" and precision == "auto" and not missing(backend) and _auto_is_f32():
                notes.append("openvino auto: resolves to f32 on this CPU (no native bf16), so the openvino f32 "
                             "run stands for it")
            elif backend == "torch" or not missing(backend):
                runs.append((MAIN_MODEL, backend, precision))
            else:
                notes.append(f"{backend} {precision}: skipped, {backend} is not installed "
                             f"(pip install \"medsamlite[{backend}]\")")
        return runs, notes


def _auto_is_f32() -> bool:
    from ..runtime.openvino import default_precision

    return default_precision() == "f32"


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

def run_label(config: BenchConfig, model: str, backend: str, precision: str) -> str:
    """A run's name in tables and folders: the model (--models), or the model with its backend and precision."""
    return f"{model}_{backend}_{precision}" if config.main_job else model


def run_model(config: BenchConfig, model: str, cases: list[Path], backend: str | None = None,
              precision: str | None = None, compiled: Compiled | None = None) -> list[dict[str, Any]]:
    """Run one model's worker process (torch-free on its folder in `compiled` where it has one for this backend
    and precision); returns its event records (an error record if it died)."""
    backend, precision = backend or config.backend, precision or config.precision
    # the folders hold the packaged weights: a run given --checkpoints builds its own model
    opens_folder = compiled is not None and backend == SPEED_BACKEND and model not in config.checkpoints
    folder = compiled.folders.get(precision) if opens_folder else None
    label = run_label(config, model, backend, precision)
    work = config.out / "runs" / label
    work.mkdir(parents=True, exist_ok=True)
    results = work / "events.jsonl"
    results.unlink(missing_ok=True)
    spec = WorkerSpec(model=model, cases=[str(c) for c in cases], out_dir=str(config.out / "segs" / label),
                      results=str(results), backend=backend, checkpoint=config.checkpoints.get(model),
                      precision=precision, threads=config.threads, seed=config.seed, folder=folder,
                      trained=compiled.trained if folder else None)
    with open(work / "worker.log", "w") as log:
        spec.launched = time.time()
        write_spec(spec, work / "spec.json")
        proc = subprocess.run([sys.executable, "-m", "medsamlite.benchmark.worker", str(work / "spec.json")],
                              stdout=log, stderr=subprocess.STDOUT, env=worker_env())
    records = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    if proc.returncode != 0:
        tail = (work / "worker.log").read_text().strip().splitlines()[-1:] or ["no output"]
        records.append({"model": model, "backend": backend, "event": "failed",
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
    speed: list[dict[str, Any]] = field(default_factory=list)  # main job: encode time per registered encoder
    notes: list[str] = field(default_factory=list)  # runs skipped, and why


def machine_context(config: BenchConfig, data: Path) -> dict[str, Any]:
    from ..runtime.precision import cpu_summary

    return {"cpu": cpu_summary(), "cores": os.cpu_count(), "threads": config.threads or "default",
            "backend": config.backend, "precision": config.precision, "python": platform.python_version(),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "data": str(data),
            "synthetic": config.data is None, "small": config.small, "main_job": config.main_job}


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


def run_bench(config: BenchConfig, progress: Any = None) -> BenchResult:
    """Run every model (main job: every backend of the trained one) over the data set, score the outputs,
    time the encoders (main job) and write the reports under `config.out`."""
    config.out.mkdir(parents=True, exist_ok=True)
    data, cases = prepare_data(config)
    rows, models = [], []
    runs, notes = config.runs()
    targets = compile_targets(runs) if config.main_job else {}
    start = time.perf_counter()
    compiled = fill_cache(targets, progress)
    compile_wall = time.perf_counter() - start
    for model, backend, precision in runs:
        if progress:
            progress(f"{model}: {len(cases)} cases ({backend} {precision})")
        label = run_label(config, model, backend, precision)
        records = run_model(config, model, cases, backend, precision, compiled.get(model))
        summary, model_rows = collect(model, backend, records, data / "gts", label)
        rows += model_rows
        models.append(summary)
    speed = encoder_speeds(config, targets, compiled, progress) if config.main_job else []
    context = machine_context(config, data)
    if compiled:
        context["compile_wall_seconds"] = compile_wall
    result = BenchResult(rows, models, context, speed, notes)
    write_reports(result, config.out)
    return result


def compile_targets(runs: list[tuple[str, str, str]]) -> dict[str, tuple[list[str], str | None]]:
    """What the main job opens on the speed backend: {model: (precisions, decoder)}; the encoder alone for
    the speed chart unless a run opens the model's entry anyway (decoder "auto", as `medsamlite.open` opens it
    in the worker, so that no run compiles)."""
    from ..registry import list_models

    targets: dict[str, tuple[list[str], str | None]] = {}
    for name in list_models():
        precisions = [p for m, b, p in runs if m == name and b == SPEED_BACKEND]
        targets[name] = (precisions, "auto") if precisions else ([SPEED_PRECISION], None)
    return targets


@dataclass
class Compiled:
    """One model's entries in the compile cache, as `fill_cache` left them."""

    seconds: float  # build + compile (or cache check) of every entry
    built: bool  # False: every entry was in the cache already
    trained: bool
    folders: dict[str, str]  # precision -> the compiled folder


def fill_cache(targets: dict[str, tuple[list[str], str | None]], progress: Any = None) -> dict[str, Compiled]:
    """Compile `compile_targets` into the cache before anything is timed (so no run's cold start and no
    encoder's time holds a compile); the runs and the speed chart open the folders it returns.

    One model after another: two compiling processes took 52 s where one took 44 s (2 cores).
    """
    if not targets or missing(SPEED_BACKEND):
        return {}
    from ..export import compile
    from .precision import bench_model

    done: dict[str, Compiled] = {}
    for name, (precisions, decoder) in targets.items():
        start, built, folders = time.perf_counter(), [], {}
        model, weights = bench_model(name)
        if progress:
            progress(f"{name}: {SPEED_BACKEND} {', '.join(precisions)} (compiled on a cache miss)")
        for precision in precisions:
            with compile(model, SPEED_BACKEND, precision=precision, decoder=decoder, on_compile=built.append) as engine:
                folders[precision] = str(engine.path)
        done[name] = Compiled(time.perf_counter() - start, bool(built), weights == "pretrained", folders)
    return done


def encoder_speeds(config: BenchConfig, targets: dict[str, tuple[list[str], str | None]],
                   compiled: dict[str, Compiled], progress: Any = None) -> list[dict[str, Any]]:
    """Median `encode` seconds of every registered encoder on OpenVINO f32, opened from the folders
    `fill_cache` compiled for `targets` (the encoder alone, or the main model's entry)."""
    from ..runtime.compiled import load
    from .latency import encode_medians

    rows = []
    for name, (_, decoder) in targets.items():
        if name not in compiled:
            continue
        if progress:
            progress(f"{name}: encoder speed ({SPEED_BACKEND} {SPEED_PRECISION})")
        entry = compiled[name]
        start = time.perf_counter()
        # packaged weights where a model has them, else seeded random ones (weights do not change the speed)
        engine = load(entry.folders[SPEED_PRECISION], precision=SPEED_PRECISION, threads=config.threads,
                      decoder=decoder)
        ready = time.perf_counter() - start
        size = engine.config.input_size
        encode = encode_medians({name: engine}, size, SPEED_REPEATS)[name]
        rows.append({"model": name, "input_size": size, "backend": SPEED_BACKEND, "precision": SPEED_PRECISION,
                     "encode_ms": 1000 * encode, "ready_seconds": ready, "compile_seconds": entry.seconds,
                     "compiled": entry.built})
        engine.close()
    return rows


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
        groups.setdefault((row["run"], row["modality"]), []).append(row)
    return [{"run": run, "model": rows[0]["model"], "weights": rows[0]["weights"], "modality": modality, "cases": len(rows),
             "dsc": _mean(rows, "dsc"), "nsd": _mean(rows, "nsd"), "seconds_mean": _mean(rows, "seconds"),
             "peak_rss_mb": max((r["peak_rss_mb"] for r in rows if r["status"] == "ok"), default=float("nan"))}
            for (run, modality), rows in groups.items()]


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


# the `medsamlite bench compare` suite (the default) -------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="results folder (default ./bench-results)")
    parser.add_argument("--models", nargs="+", help="the full comparison of these registered models on --backend "
                                                    "(default: the main job: litemedsam on each backend plus every "
                                                    "encoder's speed)")
    parser.add_argument("--checkpoints", nargs="+", default=[], metavar="MODEL=PATH",
                        help="trained weights for a model (any supported layout); without them a model with no "
                             "packaged weights runs with random weights, for speed only")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="the backend of a --models run (default torch: name a compiled runtime to rank on it)")
    parser.add_argument("--data", type=Path, help="a folder with imgs/*.npz and gts/*.npz (default: generate a "
                                                  "synthetic set under OUT/data)")
    parser.add_argument("--small", action="store_true", default=os.environ.get("MEDSAMLITE_BENCH_SMALL") == "1",
                        help="tiny synthetic cases, for CI (also MEDSAMLITE_BENCH_SMALL=1)")
    parser.add_argument("--precision", choices=("f32", "bf16", "auto"), default="f32",
                        help="the precision of a --models run")
    parser.add_argument("--threads", type=int, help="CPU threads of the runtime (default: its own choice)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data and random-weight initialisation")
    # the defaults are read from the settings, so the help cannot drift from them
    parser.add_argument("--size", type=float, help=f"synthetic image scale (default {DEFAULT_DATA.size}, --small "
                                                   f"{SMALL_DATA.size}; 1.0 = realistic)")
    parser.add_argument("--depth", type=float, help=f"synthetic 3D slice-count scale (default {DEFAULT_DATA.depth}, "
                                                    f"--small {SMALL_DATA.depth}; 1.0 = realistic, at least 4 slices)")


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
          "modalities.csv, models.csv, encoder_speed.csv, *.png)", file=sys.stderr)
    failed = sum(m["failed"] for m in result.models) + sum(bool(m["error"]) for m in result.models)
    return 1 if failed else 0
