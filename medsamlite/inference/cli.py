"""`medsamlite predict`: segment task `.npz` cases (a file or a folder) with any model and backend.

An exported folder with a non-torch backend loads through `medsamlite.export.load` and never imports torch.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

BACKENDS = ("torch", "openvino", "onnxruntime")
CSV_FIELDS = ("case", "kind", "shape", "boxes", "status", "seconds", "read", "preprocess", "encode", "decode",
              "postprocess", "write")
TIMINGS_FILE, RUN_FILE = "timings.csv", "run.json"
WEIGHTS_FILE = "model.safetensors"  # a `save_model` folder (torch); an exported folder has graphs instead


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
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="default: the backend of an exported folder, else torch; openvino/onnxruntime "
                             "with a registered model compiles it once into the cache")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the runtime")
    parser.add_argument("--overlap", choices=("order", "argmax"), default="order",
                        help="order: later boxes win (the reference); argmax: highest logit wins")
    parser.add_argument("--precision", choices=("f32", "bf16", "auto"), default=None,
                        help="default: f32 (exact), or what an exported folder was exported with; bf16; "
                             "auto: bf16 where the CPU has it natively (torch), the runtime's default otherwise")
    parser.add_argument("--chunk-size", type=int, default=64, help="most boxes per decoder call")
    parser.add_argument("--encode-batch", type=int, default=4,
                        help="3D: most distinct slices per encoder call, run in parallel OpenVINO streams (1: one "
                             "slice at a time; measured faster for EfficientViT, slower for TinyViT at bf16)")
    parser.add_argument("--cache-slices", type=int, default=64,
                        help="most 3D slice embeddings held at once (4 MB each)")


def _torch_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    from ..export.precision import cpu_supports_bf16

    return "bf16" if cpu_supports_bf16() else "f32"


def _torch_model(args: argparse.Namespace) -> Any:
    """A torch SamLite from a saved folder or a registry name with its weights."""
    from ..checkpoints import load_model
    from ..registry import create_model, get_model_config

    if Path(args.model).is_dir():
        return load_model(args.model)
    config = get_model_config(args.model)
    if args.checkpoint is None and not args.pretrained and config.pretrained is None:
        raise SetupError(f"model '{args.model}' has no packaged weights; pass --checkpoint PATH")
    return create_model(args.model, checkpoint=args.checkpoint, pretrained=args.checkpoint is None)


def _engine(args: argparse.Namespace) -> Any:
    folder = Path(args.model)
    if folder.is_dir() and (args.checkpoint is not None or args.pretrained):
        raise SetupError(f"{folder}: a model folder holds its own weights; drop --checkpoint/--pretrained")
    if (folder / "daft.json").exists():  # a data-aware export (adapters.routed.MANIFEST): one model per group
        from ..adapters.routed import RoutedPredictor

        return RoutedPredictor.open(folder, backend=args.backend, threads=args.threads, precision=args.precision)
    if folder.is_dir() and not (folder / WEIGHTS_FILE).exists():  # an exported folder: torch-free
        if args.backend == "torch":
            raise SetupError(f"{folder}: an exported folder runs on its runtime; omit --backend or name its runtime")
        from ..export import load

        return load(folder, backend=args.backend, precision=args.precision, threads=args.threads)
    model = _torch_model(args)
    if args.backend in (None, "torch"):
        import torch

        from .torch_engine import TorchEngine

        if args.threads:
            torch.set_num_threads(args.threads)
        return TorchEngine(model, precision=_torch_precision(args.precision or "f32"))
    from ..export import compile

    return compile(model, backend=args.backend, precision=args.precision or "f32", threads=args.threads)


def load_engine(args: argparse.Namespace) -> Any:
    """The engine `args` ask for; an exported folder never imports torch. Failures are one-line `SetupError`s."""
    try:
        return _engine(args)
    except SetupError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as error:  # CheckpointError is a RuntimeError
        text = " ".join(str(error).strip("'\"").split())
        raise SetupError(f"cannot load model '{args.model}': {type(error).__name__}: {text}") from None


def input_cases(path: Path, output: Path) -> list[Path]:
    """The `.npz` cases named by INPUT (a file or a folder), refusing to write into the input folder."""
    if not path.exists():
        raise SetupError(f"{path}: no such file or folder")
    folder = path if path.is_dir() else path.parent
    if output.exists() and output.resolve() == folder.resolve():
        raise SetupError(f"{output}: the output folder is the input folder (outputs share the inputs' names); "
                         "expected a different folder")
    cases = sorted(p for p in path.glob("*.npz") if p.is_file()) if path.is_dir() else [path]
    if not cases:
        raise SetupError(f"{path}: no .npz cases in this folder")
    return cases


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

    from .predictor import PHASES, Predictor

    options = {"chunk_size": args.chunk_size, "overlap": args.overlap, "cache_slices": args.cache_slices,
               "encode_batch": args.encode_batch}
    try:
        predictor = engine.with_options(**options) if hasattr(engine, "with_options") else Predictor(engine, **options)
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
