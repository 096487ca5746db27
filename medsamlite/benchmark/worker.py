"""One model's benchmark run in its own process: load once, predict every case, report time and peak memory.

`python -m medsamlite.benchmark.worker SPEC.json` reads a `WorkerSpec` and writes one JSON line per event to
`spec.results`: a "model" line (weights, cold-start seconds, RSS after loading), then a "case" line per case.
Cold start runs from the parent's launch of the process (`spec.launched`) to the engine being ready:
interpreter start, imports, model build and weights, as in the task's one-process-per-case timing.

Peak memory per case: on Linux the process's peak RSS (VmHWM) is reset before each case by writing "5" to
/proc/self/clear_refs and read back after it, so each case's figure is its own peak (model weights, runtime
and buffers included, as the task's 8 GB limit sees them). Elsewhere the figure is `ru_maxrss`, the peak so
far in the process (`rss_method` says which).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

@dataclass
class WorkerSpec:
    """What one worker process runs: a model (with weights and backend) over a list of cases."""

    model: str
    cases: list[str]
    out_dir: str
    results: str
    backend: str = "torch"
    checkpoint: str | None = None
    precision: str = "f32"
    threads: int | None = None
    seed: int = 0  # initialisation of models benchmarked without trained weights
    launched: float = 0.0  # time.time() when the parent started this process
    folder: str | None = None  # the model's compiled folder, opened torch-free instead of building the model
    trained: bool | None = None  # whether `folder` holds trained weights (None: the worker checks the model)


def reset_peak_rss() -> str:
    """Reset the peak RSS counter when the OS allows it; returns the method `peak_rss_mb` will use."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "vmhwm-per-case"
    except OSError:
        return "ru_maxrss-cumulative"


def peak_rss_mb() -> float:
    """Peak resident memory (MiB) since the last reset (Linux) or since the process started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2 ** 20


def has_trained_weights(model: str, checkpoint: str | None) -> bool:
    """A checkpoint was given, or the model's packaged trained weights are installed."""
    from ..factory import has_pretrained
    from ..registry import get_model_config

    return checkpoint is not None or has_pretrained(get_model_config(model))


def load_engine(spec: WorkerSpec, trained: bool) -> Any:
    """The engine to benchmark through `medsamlite.open`: the compiled folder (torch-free, as an exported model
    runs), else the model with trained weights, else with a seeded random init."""
    from ..engines import open as open_model

    options = dict(backend=spec.backend, precision=spec.precision, threads=spec.threads)
    if spec.folder:
        return open_model(spec.folder, **options)
    if trained:
        return open_model(spec.model, checkpoint=spec.checkpoint, **options)
    import torch

    from ..factory import create_model

    torch.manual_seed(spec.seed)
    return open_model(create_model(spec.model), **options)


def run(spec: WorkerSpec) -> None:
    from ..runtime.predictor import Predictor

    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(spec.results, "a") as log:
        def emit(**record: Any) -> None:
            log.write(json.dumps({"model": spec.model, "backend": spec.backend, **record}) + "\n")
            log.flush()

        trained = spec.trained if spec.trained is not None else has_trained_weights(spec.model, spec.checkpoint)
        engine = load_engine(spec, trained)
        predictor = Predictor(engine)
        emit(event="model", weights="trained" if trained else "random", load_seconds=time.time() - spec.launched,
             rss_after_load_mb=peak_rss_mb(), input_size=predictor.config.input_size,
             precision=getattr(engine, "precision", spec.precision), torch_imported="torch" in sys.modules)
        for case in map(Path, spec.cases):
            method = reset_peak_rss()
            try:
                result = predictor.predict_file(case, out / case.name)
            except Exception as error:  # one failing case never stops the others
                emit(event="case", case=case.name, status="error", error=" ".join(str(error).split()))
                continue
            emit(event="case", case=case.name, status="ok", seconds=result.seconds, phases=result.phases,
                 boxes=result.boxes, peak_rss_mb=peak_rss_mb(), rss_method=method, segs=str(result.out_path))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m medsamlite.benchmark.worker SPEC.json", file=sys.stderr)
        return 2
    from ..runtime.allocator import keep_freed_memory

    keep_freed_memory()  # as `medsamlite predict` does
    run(WorkerSpec(**json.loads(Path(argv[0]).read_text())))
    return 0


def worker_env() -> dict[str, str]:
    """The environment with this medsamlite first on the path, so a worker process runs the same code as we do."""
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}


def write_spec(spec: WorkerSpec, path: Path) -> Path:
    path.write_text(json.dumps(asdict(spec), indent=1))
    return path


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # everything is written and flushed; the interpreter's teardown of torch and timm's modules takes 0.8-3.4 s
    # here (measured), counted by no figure but by the main job's wall time
    os._exit(code)
