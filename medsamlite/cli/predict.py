"""`medsamlite predict`: segment task `.npz` cases (a file or a folder) with any model and backend.

Models open through `medsamlite.open`; an exported folder never imports torch.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..constants import BACKENDS, DECODERS, PHASES, find_cases

CSV_FIELDS = ("case", "kind", "shape", "boxes", "status", "seconds", *PHASES)
TIMINGS_FILE, RUN_FILE = "timings.csv", "run.json"


class SetupError(RuntimeError):
    """The run cannot start (model, weights or folders); reported as one line, exit code 1."""


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
                             "box-independent part once per image (torch backend)")
    parser.add_argument("--chunk-size", type=int, default=64, help="most boxes per decoder call")
    parser.add_argument("--encode-batch", type=int, default=4,
                        help="3D: most distinct slices per encoder call, run in parallel OpenVINO streams (1: one "
                             "slice at a time; measured faster for EfficientViT, slower for TinyViT at bf16)")
    parser.add_argument("--cache-slices", type=int, default=64,
                        help="most 3D slice embeddings held at once (4 MB each)")


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
        text = " ".join(str(error).strip("'\"").split())
        raise SetupError(f"cannot load model '{args.model}': {type(error).__name__}: {text}") from None


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


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        cases = input_cases(args.input, args.output)
        args.output.mkdir(parents=True, exist_ok=True)
        engine = load_engine(args)
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    load_seconds = time.perf_counter() - start
    from tqdm import tqdm

    from ..runtime.routed import as_predictor

    options = {"chunk_size": args.chunk_size, "overlap": args.overlap, "cache_slices": args.cache_slices,
               "encode_batch": args.encode_batch}
    try:
        predictor = as_predictor(engine, **options)
    except ValueError as error:  # an option out of range, e.g. --encode-batch 0
        print(f"error: {error}", file=sys.stderr)
        return 1
    failed = 0
    with open(args.output / TIMINGS_FILE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for path in tqdm(cases, desc="predict", unit="case", file=sys.stderr, disable=None):
            row: dict[str, Any] = {"case": path.name, "status": "ok"}
            try:
                result = predictor.predict_file(path, args.output / path.name)
            except Exception as error:  # one bad case never stops the others
                failed += 1
                tqdm.write(f"error: {_one_line(error, path)}", file=sys.stderr)
                row["status"] = "error"
            else:
                for message in result.warnings:
                    tqdm.write(f"warning: {message}", file=sys.stderr)
                row.update(kind=result.kind, shape="x".join(map(str, result.shape)), boxes=result.boxes,
                           seconds=f"{result.seconds:.4f}",
                           **{p: f"{result.phases.get(p, 0.0):.4f}" for p in PHASES})
            writer.writerow(row)
            f.flush()
    summary = {"model": str(args.model), "engine": repr(engine), "precision": getattr(engine, "precision", None),
               "threads": args.threads, "overlap": args.overlap, "load_seconds": round(load_seconds, 4),
               "run_seconds": round(time.perf_counter() - start, 4), "cases": len(cases), "failed": failed}
    (args.output / RUN_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    if failed:
        print(f"error: {failed} of {len(cases)} cases failed", file=sys.stderr)
    return 1 if failed else 0
