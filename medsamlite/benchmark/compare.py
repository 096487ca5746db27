"""Compare models on the task's metrics, runtime and memory: run, score, and write CSV, markdown and plots.

The main job (`medsamlite bench` without `--models`) shows what is real: the trained model (litemedsam) on
each backend and precision this machine offers (torch f32, OpenVINO f32, OpenVINO at the runtime's default
precision) with DSC, NSD and time per case, then the encode speed of every registered encoder on OpenVINO
f32 (compiled through the compile cache, seeded random weights where none are trained: speed only, no DSC).
`--models ...` is the full comparison: every listed model on one backend, DSC and all.

Each run (model, backend, precision) runs in its own process (`worker.py`): cold start (imports, build, weights;
the main job's OpenVINO runs open their compiled folder torch-free, as an exported model runs) is timed apart from the cases, and memory is that process's own. Scores are computed in this process, from the written `segs`,
with `medsamlite.runtime.scoring.score_file` under the task's rules; cases without ground truth are timed,
not scored. Models without trained weights run with a seeded random initialisation: their runtime and memory are real, their DSC/NSD mean nothing and are not
shown as accuracy (the CSVs keep them with `weights=random`).

This module runs a comparison (`run_bench`: one worker process per run) and is the command (`add_arguments`,
`run`); its parts: `compare_config` (settings, runs, data set), `compare_compile` (the compile cache filled
before anything is timed, encoder speeds), `compare_scores` (scored rows and summaries) and `compare_report`
(CSVs, markdown, plots). Every name of theirs is importable from here too.
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
from pathlib import Path
from typing import Any

from ..constants import BACKENDS
# the suite's names, importable from here as before the split
from .compare_compile import Compiled, compile_targets, encoder_speeds, fill_cache  # noqa: F401
from .compare_config import (DEFAULT_DATA, MAIN_MODEL, MAIN_RUNS, SMALL_DATA, SPEED_BACKEND,  # noqa: F401
                             SPEED_PRECISION, SPEED_REPEATS, BenchConfig, BenchError, DataSetting, prepare_data)
from .compare_report import (CASE_FIELDS, MODALITY_FIELDS, MODEL_FIELDS, SPEED_FIELDS, markdown,  # noqa: F401
                             speed_table, speedups, write_reports)
from .compare_scores import BenchResult, by_modality, collect, score_case, summarise  # noqa: F401
from .worker import WorkerSpec, worker_env, write_spec


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


def machine_context(config: BenchConfig, data: Path) -> dict[str, Any]:
    from ..runtime.precision import cpu_summary

    return {"cpu": cpu_summary(), "cores": os.cpu_count(), "threads": config.threads or "default",
            "backend": config.backend, "precision": config.precision, "python": platform.python_version(),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "data": str(data),
            "synthetic": config.data is None, "small": config.small, "main_job": config.main_job}


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
