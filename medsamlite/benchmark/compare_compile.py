"""The main job's compiled models: every registered model compiled into the cache before anything is timed
(`fill_cache`), then each encoder's speed, opened from those folders (`encoder_speeds`)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..extras import missing
from .compare_config import SPEED_BACKEND, SPEED_PRECISION, SPEED_REPEATS, BenchConfig


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
