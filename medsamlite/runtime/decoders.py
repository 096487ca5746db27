"""Which mask decoder runs an image or slice: dense for few boxes, factorised from a threshold on (torch-free).

The factorised decoder runs each image's box-independent part once (`prepare`) and its boxes in static
batches, so it pays once an image holds enough boxes; below that SAM's dense decoder is faster. An engine
opened with `decoder="auto"` holds both and picks per image or slice from its box count: factorised from
`factorised_from` boxes on. The threshold depends on the CPU and the precision, so a compiled folder records
it per CPU kind and precision in its `config.json` (`measure_folder`: `measure_threshold` + `record_threshold`,
which `medsamlite export --measure-decoders` runs; on another CPU, call it on the folder there); where none is
recorded, `DEFAULT_FACTORISED_FROM`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..constants import CONFIG_FILE, DECODERS
from .files import atomic_file
from .precision import cpu_name

AUTO = "auto"
DECODER_MODES = (AUTO, *DECODERS)
# Issue 33 measured the factorised decoder paying from about 4 boxes on one image at f32 (34 boxes 1.31x,
# 200 boxes 1.85x faster); a 3D slice usually carries one or two, and stays dense.
DEFAULT_FACTORISED_FROM = 4
# config.json: {"factorised_from": {"<cpu name>": {"<precision>": boxes}}}
THRESHOLDS_KEY = "factorised_from"
# box counts timed by `measure_threshold`: the dense decoder's one call per box against `prepare` + batches
MEASURED_BOXES = (1, 2, 3, 4, 6, 8, 12, 16, 32)


def check_mode(decoder: str | None, allow_none: bool = False) -> None:
    """A ValueError unless `decoder` is auto, dense or factorised (or None where that means the encoder alone)."""
    if decoder not in DECODER_MODES and not (allow_none and decoder is None):
        raise ValueError(f"decoder {decoder!r}; expected one of {', '.join(DECODER_MODES)}"
                         + (" or None" if allow_none else ""))


def entry_decoders(decoder: str | None) -> tuple[str, ...]:
    """The decoders a cache entry compiled for an engine running `decoder` holds: "auto" both."""
    return DECODERS if decoder == AUTO else (decoder,) if decoder else ()


def pick(boxes: int, factorised_from: int) -> str:
    """The decoder for an image or slice of `boxes` boxes: factorised from `factorised_from` boxes on."""
    return "factorised" if boxes >= factorised_from else "dense"


def recorded_threshold(meta: Mapping[str, Any], precision: str, cpu: str | None = None) -> int | None:
    """The threshold a compiled folder's config records for this CPU (default: the one running) and precision."""
    value = meta.get(THRESHOLDS_KEY, {}).get(cpu or cpu_name(), {}).get(precision)
    return int(value) if value is not None else None


def factorised_from(meta: Mapping[str, Any], precision: str, cpu: str | None = None) -> int:
    """The recorded threshold for this CPU and precision, else `DEFAULT_FACTORISED_FROM`."""
    recorded = recorded_threshold(meta, precision, cpu)
    return DEFAULT_FACTORISED_FROM if recorded is None else recorded


def decoder_for(engine: Any, boxes: int) -> str:
    """The decoder `engine` runs on an image or slice of `boxes` boxes: its own pick where it has one ("auto"),
    else the one it was opened with (an engine without `decoder`: dense)."""
    choose = getattr(engine, "decoder_for", None)
    if callable(choose):
        return choose(boxes)
    return getattr(engine, "decoder", None) or "dense"


def threshold_of(dense: Mapping[int, float], factorised: Mapping[int, float]) -> int:
    """The smallest measured box count from which the factorised decoder was no slower at every larger count
    measured (seconds per count); one past the largest count when it never was."""
    counts = sorted(dense)
    threshold = counts[-1] + 1
    for n in reversed(counts):
        if factorised[n] > dense[n]:
            break
        threshold = n
    return threshold


def measure_threshold(engine: Any, counts: Sequence[int] = MEASURED_BOXES, repeats: int = 3,
                      clock: Callable[[], float] = time.perf_counter, seed: int = 0) -> int:
    """Time both decoders of an engine that holds them on one embedding with each of `counts` boxes (best of
    `repeats`; the factorised time includes `prepare`) and return `threshold_of` the timings.

    Timing: run it on an idle machine (the lead's job; the tests give it a fake clock).
    """
    size = engine.config.box_frame
    rng = np.random.default_rng(seed)
    embedding = rng.standard_normal((1, *engine.config.embedding_shape)).astype(np.float32)
    corners = rng.random((max(counts), 2)) * size * 0.6
    boxes = np.concatenate([corners, corners + size * 0.3], axis=1).astype(np.float32)
    dense = {n: _best_of(lambda n=n: engine.decode_dense(embedding, boxes[:n]), repeats, clock) for n in counts}
    factorised = {n: _best_of(lambda n=n: engine.decode_prepared(engine.prepare(embedding), boxes[:n]),
                              repeats, clock) for n in counts}
    return threshold_of(dense, factorised)


def _best_of(run: Callable[[], Any], repeats: int, clock: Callable[[], float]) -> float:
    """The shortest of `repeats` timed calls, after one untimed call (first calls compile kernels)."""
    run()
    times = []
    for _ in range(repeats):
        start = clock()
        run()
        times.append(clock() - start)
    return min(times)


def measure_folder(folder: str | Path, threads: int | None = None) -> int:
    """Measure a compiled folder's threshold on this CPU at its precision (`measure_threshold`) and record it in
    its config.json (`record_threshold`); returns it. Timing: run it on an idle machine."""
    from .compiled import load  # compiled imports this module

    with load(folder, decoder=AUTO, threads=threads) as engine:
        if len(engine.decoders) < len(DECODERS):
            raise ValueError(f"{folder}: holds the decoders {engine.decoders}; measuring the threshold needs both "
                             "(export it again)")
        threshold, precision = measure_threshold(engine), engine.precision
    record_threshold(folder, threshold, precision)
    return threshold


def record_threshold(folder: str | Path, threshold: int, precision: str, cpu: str | None = None) -> None:
    """Write `threshold` for this CPU (default: the one running) and precision into a compiled folder's config.

    config.json records the other files' digests, not its own, so the folder stays sound.
    """
    file = Path(folder) / CONFIG_FILE
    meta = json.loads(file.read_text())
    meta.setdefault(THRESHOLDS_KEY, {}).setdefault(cpu or cpu_name(), {})[precision] = int(threshold)
    with atomic_file(file) as out:
        out.write(json.dumps(meta, indent=2, sort_keys=True).encode())
