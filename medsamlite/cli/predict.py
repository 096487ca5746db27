"""`medsamlite predict`: segment task `.npz` cases (a file or a folder) with any model and backend.

Models open through `medsamlite.open`; an exported folder never imports torch.
"""
from __future__ import annotations

import argparse
import csv
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..constants import BACKENDS, DECODERS, PHASES, find_cases
from ..runtime.files import atomic_file, remove_orphans
from .errors import SetupError, one_line, writable_folder

CSV_FIELDS = ("case", "kind", "shape", "boxes", "status", "seconds", *PHASES)
TIMINGS_FILE, RUN_FILE = "timings.csv", "run.json"
# what atomic_file leaves when a run is killed: .NAME. + mkstemp's 8 random characters + .tmp
ORPHANS = ".*.????????.tmp"
# exit status of a run stopped by SIGINT (128 + SIGINT, as a shell reports it)
INTERRUPTED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True, type=Path, help="a task .npz case or a folder of them")
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="output folder (created; must not be the input folder)")
    parser.add_argument("--model", default="litemedsam",
                        help="a registered model name, a saved model folder (torch) or an exported folder "
                             "(default: litemedsam with its pretrained weights)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", type=Path, help="weights for a registered model (any supported layout)")
    weights.add_argument("--pretrained", action="store_true",
                         help="the model's packaged weights (the default when it has them)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow a --checkpoint that is a whole pickled model: reading it runs code from the file")
    parser.add_argument("--backend", choices=("auto", *BACKENDS), default=None,
                        help="default: the runtime of an exported folder, else torch; openvino/onnxruntime "
                             "with a registered model compiles it once into the cache")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the runtime")
    parser.add_argument("--overlap", choices=("order", "argmax"), default="order",
                        help="order: later boxes win (the reference); argmax: highest logit wins")
    parser.add_argument("--precision", choices=("f32", "bf16", "auto"), default=None,
                        help="default: f32 (exact), or what an exported folder was exported with; bf16; "
                             "auto: bf16 where the CPU has it natively (torch), the runtime's default otherwise")
    parser.add_argument("--decoder", choices=DECODERS, default="dense",
                        help="dense: SAM's decoder per box (default); factorised: the same logits to rounding, the "
                             "box-independent part once per image or slice, boxes in batches")
    parser.add_argument("--chunk-size", type=int, default=64, help="most boxes per decoder call")
    parser.add_argument("--encode-batch", type=int, default=4,
                        help="3D: most distinct slices per encoder call, run in parallel OpenVINO streams (1: one "
                             "slice at a time; measured faster for EfficientViT, slower for TinyViT at bf16)")
    parser.add_argument("--cache-slices", type=int, default=64,
                        help="most 3D slices whose decoder input (embedding, or factorised prepared tensors) is held at once")
    parser.add_argument("--cache-mb", type=float, default=256,
                        help="most MiB of 3D decoder inputs held at once: embeddings are 4 MiB a slice, the factorised "
                             "decoder's prepared tensors about 28 MiB")


def load_engine(args: argparse.Namespace) -> Any:
    """The engine `args` ask for (through `medsamlite.open`); failures are one-line `SetupError`s."""
    from ..engines import open as open_model

    backend = args.backend or ("auto" if Path(args.model).is_dir() else "torch")
    try:
        return open_model(args.model, backend=backend, precision=args.precision, threads=args.threads,
                          checkpoint=args.checkpoint, pretrained=True if args.pretrained else None,
                          trust_checkpoint=getattr(args, "trust_checkpoint", False),
                          decoder=getattr(args, "decoder", "dense"))
    except (OSError, ValueError, KeyError, RuntimeError) as error:  # CheckpointError is a RuntimeError
        raise SetupError(f"cannot load model '{args.model}': {one_line(error)}") from None


def input_cases(path: Path, output: Path) -> list[Path]:
    """The `.npz` cases named by INPUT (a file or a folder), refusing to write into the input folder."""
    folder = path if path.is_dir() else path.parent
    if output.exists() and output.resolve() == folder.resolve():
        raise SetupError(f"{output}: the output folder is the input folder (outputs share the inputs' names); "
                         "expected a different folder")
    try:
        cases = find_cases(path)
    except FileNotFoundError as error:
        raise SetupError(str(error)) from None
    for entry in cases.skipped:
        print(f"warning: skipped {entry}", file=sys.stderr)
    if not cases.files:
        raise SetupError(f"{path}: no .npz cases in this folder")
    return cases.files


def _one_line(error: BaseException, path: Path) -> str:
    text = " ".join(str(error).split())
    return text if text.startswith(str(path)) else f"{path}: {type(error).__name__}: {text}"


def prepare_output(folder: Path) -> None:
    """The output folder, writable, without the temporary files of an earlier run that was killed."""
    writable_folder(folder)
    removed = remove_orphans(folder, ORPHANS)
    if removed:
        print(f"warning: removed {len(removed)} temporary files of an earlier interrupted run in {folder}",
              file=sys.stderr)


class StopAfterCase:
    """SIGINT while cases run: the first stops the run after the current case, a second stops it at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("interrupted: stopping after the current case (Ctrl-C again to stop now)", file=sys.stderr)

    def __enter__(self) -> "StopAfterCase":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        cases = input_cases(args.input, args.output)
        prepare_output(args.output)
        engine = load_engine(args)
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    load_seconds = time.perf_counter() - start
    from tqdm import tqdm

    from ..runtime.routed import as_predictor

    options = {"chunk_size": args.chunk_size, "overlap": args.overlap, "cache_slices": args.cache_slices,
               "cache_mb": args.cache_mb, "encode_batch": args.encode_batch}
    try:
        predictor = as_predictor(engine, **options)
    except ValueError as error:  # an option out of range, e.g. --encode-batch 0
        print(f"error: {error}", file=sys.stderr)
        return 1
    failed, done = 0, 0
    with open(args.output / TIMINGS_FILE, "w", newline="") as f, StopAfterCase() as stop:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        try:
            for path in tqdm(cases, desc="predict", unit="case", file=sys.stderr, disable=None):
                if stop.requested:
                    break
                row = _predict_case(predictor, path, args.output)
                failed += row["status"] == "error"
                done += 1
                writer.writerow(row)
                f.flush()
        except KeyboardInterrupt:  # a second SIGINT: the current case is dropped (its output is never half-written)
            pass
    interrupted = stop.requested and done < len(cases)
    summary = {"model": str(args.model), "engine": repr(engine), "precision": getattr(engine, "precision", None),
               "threads": args.threads, "overlap": args.overlap, "load_seconds": round(load_seconds, 4),
               "run_seconds": round(time.perf_counter() - start, 4), "cases": len(cases), "done": done,
               "failed": failed, "interrupted": interrupted}
    with atomic_file(args.output / RUN_FILE) as out:
        out.write((json.dumps(summary, indent=2) + "\n").encode())
    if failed:
        print(f"error: {failed} of {len(cases)} cases failed", file=sys.stderr)
    if interrupted:
        return INTERRUPTED
    return 1 if failed else 0


def _predict_case(predictor: Any, path: Path, output: Path) -> dict[str, Any]:
    """Segment one case into `output`; its timings.csv row. One bad case never stops the others."""
    from tqdm import tqdm

    row: dict[str, Any] = {"case": path.name, "status": "ok"}
    try:
        result = predictor.predict_file(path, output / path.name)
    except Exception as error:
        tqdm.write(f"error: {_one_line(error, path)}", file=sys.stderr)
        row["status"] = "error"
        return row
    for message in result.warnings:
        tqdm.write(f"warning: {message}", file=sys.stderr)
    row.update(kind=result.kind, shape="x".join(map(str, result.shape)), boxes=result.boxes,
               seconds=f"{result.seconds:.4f}", **{p: f"{result.phases.get(p, 0.0):.4f}" for p in PHASES})
    return row
