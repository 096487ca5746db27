"""`medsamlite predict`: segment task `.npz` cases, NIfTI volumes and DICOM series (a file or a folder) with any model.

Models open through `medsamlite.open`; an exported folder never imports torch.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..constants import BACKENDS, PHASES, find_cases
from ..runtime.decoders import AUTO, DECODER_MODES
from ..runtime.files import ORPHANS, atomic_file, remove_orphans
from .errors import SetupError, one_line, writable_folder

CSV_FIELDS = ("case", "group", "kind", "shape", "boxes", "status", "seconds", *PHASES)
TIMINGS_FILE, RUN_FILE = "timings.csv", "run.json"
# exit status of a run stopped by SIGINT (128 + SIGINT, as a shell reports it)
INTERRUPTED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True, type=Path,
                        help="a task .npz case, a .nii/.nii.gz volume, a DICOM series folder, or a folder of them")
    parser.add_argument("--prompts", type=Path, default=None,
                        help="NIfTI / DICOM inputs: a JSON file mapping each input's file (or series folder) name to "
                             '{"boxes": [[x_min, y_min, z_min, x_max, y_max, z_max], ...]} (label n is box n)')
    parser.add_argument("--prompt-space", choices=("voxel", "world"), default="voxel",
                        help="voxel (default): x, y, z are the indices i, j, k of the array as stored; world: "
                             "millimetres in RAS, as nibabel's affine gives them")
    parser.add_argument("--window", default="auto",
                        help="NIfTI / DICOM intensities: auto (default; CT: soft-tissue window, others: 0.5-99.5 "
                             "percentiles), percentile, none (as stored), a CT preset (soft_tissue, lung, bone, brain, "
                             "liver, mediastinum, abdomen) or LEVEL,WIDTH in HU")
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
    parser.add_argument("--backend", choices=("auto", *BACKENDS), default="auto",
                        help="auto (default): an exported folder on its runtime, any other model compiled once "
                             "into the cache for OpenVINO where it is installed (else torch); torch: no compile")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of the runtime (OpenVINO INFERENCE_NUM_THREADS, torch.set_num_threads)")
    parser.add_argument("--skip-existing", action="store_true",
                        help="skip cases whose output exists (a rerun after an interruption does the rest); "
                             "timings.csv is appended to")
    parser.add_argument("--overlay", type=Path, default=None, metavar="DIR",
                        help="also write a PNG per case to DIR: the image, the boxes, each label's contour "
                             "(3D: a montage of each box's middle slice)")
    parser.add_argument("--clicks", type=Path, default=None, metavar="JSON",
                        help='scripted corrections of .npz cases: {"<case>.npz": [round, ...]}, a round a list of '
                             '{"label": n, "point": [x, y] or [x, y, z], "positive": true|false} in the case\'s '
                             "pixels; each round refines the last (docs/inference.md); runs the torch model, or "
                             "an exported folder on its runtime")
    parser.add_argument("--classes", action="store_true",
                        help=".npz cases: also write the class maps of a model trained with class outputs (train "
                             "finetune --num-classes C) under the key 'classes' of each output: (C, H, W) or "
                             "(C, D, H, W) uint8, map c the union of every box's class-c mask; runs the torch model")
    parser.add_argument("--overlap", choices=("order", "argmax"), default="order",
                        help="order: later boxes win (the reference); argmax: highest logit wins")
    parser.add_argument("--precision", choices=("f32", "bf16", "auto"), default=None,
                        help="default: f32 (exact), or what an exported folder was exported with; bf16; "
                             "auto: bf16 where the CPU has it natively (torch), the runtime's default otherwise")
    parser.add_argument("--decoder", choices=DECODER_MODES, default=AUTO,
                        help="auto (default): per image or slice, factorised from a threshold of boxes on (recorded "
                             "per CPU and precision in an exported folder, else 4), dense below; dense: SAM's decoder "
                             "per box; factorised: the same logits to rounding, the box-independent part once per "
                             "image or slice, boxes in batches")
    parser.add_argument("--chunk-size", type=int, default=64, help="most boxes per decoder call")
    parser.add_argument("--encode-batch", type=int, default=4,
                        help="3D: most distinct slices per encoder call, run in parallel OpenVINO streams (1: one "
                             "slice at a time; measured faster for EfficientViT, slower for TinyViT at bf16)")
    parser.add_argument("--cache-slices", type=int, default=64,
                        help="most 3D slices whose decoder input (embedding, or factorised prepared tensors) is held at once")
    parser.add_argument("--cache-mb", type=float, default=256,
                        help="most MiB of 3D decoder inputs held at once: embeddings are 4 MiB a slice, the factorised "
                             "decoder's prepared tensors about 26 MiB")


def load_engine(args: argparse.Namespace) -> Any:
    """The engine `args` ask for (through `medsamlite.open`); failures are one-line `SetupError`s."""
    from ..engines import open as open_model

    decoder = getattr(args, "decoder", AUTO)
    try:
        return open_model(args.model, backend=args.backend, precision=args.precision, threads=args.threads,
                          checkpoint=args.checkpoint, pretrained=True if args.pretrained else None,
                          trust_checkpoint=getattr(args, "trust_checkpoint", False), decoder=decoder,
                          on_compile=lambda message: print(f"medsamlite predict: {message}", file=sys.stderr))
    except (OSError, ValueError, KeyError, RuntimeError) as error:  # CheckpointError is a RuntimeError
        raise SetupError(f"cannot load model '{args.model}': {one_line(error)}") from None


def input_cases(path: Path, output: Path) -> list[Path]:
    """The `.npz` cases, NIfTI files and DICOM series named by INPUT (a file or a folder), refusing to write into
    the input folder."""
    from ..runtime.volumes import find_volumes

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
    volumes = find_volumes(path)
    files = volumes if path in volumes else cases.files + volumes
    if not files:
        raise SetupError(f"{path}: no .npz cases, NIfTI files or DICOM series in this folder")
    return files


def is_volume(path: Path) -> bool:
    """A NIfTI file or a DICOM series folder (its output is NIfTI); else a task `.npz` case."""
    from ..runtime.volumes import is_nifti

    return path.is_dir() or is_nifti(path)


def output_path(path: Path, output: Path) -> Path:
    """Where the case's label map goes: the input's name (a volume's as `.nii.gz`) in the output folder."""
    from ..runtime.volumes import output_name

    return output / (output_name(path) if is_volume(path) else path.name)


def volume_options(args: argparse.Namespace, cases: list[Path]) -> dict[str, Any] | None:
    """The prompts, their space and the window for the NIfTI / DICOM inputs; None when there are none."""
    from ..runtime.npz import CaseError
    from ..runtime.volumes import read_prompts, unused_prompts
    from ..runtime.windowing import check_window

    volumes = [p for p in cases if is_volume(p)]
    if not volumes:
        return None
    if args.prompts is None:
        raise SetupError(f"{volumes[0]}: a NIfTI volume or DICOM series needs --prompts; expected a prompts.json")
    try:
        prompts = read_prompts(args.prompts)
        window = check_window(args.window)
    except (CaseError, ValueError) as error:
        raise SetupError(str(error)) from None
    for message in unused_prompts(prompts, volumes, args.prompts):
        print(f"warning: {message}", file=sys.stderr)
    return {"prompts": prompts, "prompts_source": args.prompts, "space": args.prompt_space, "window": window}


def case_clicks(args: argparse.Namespace, cases: list[Path]) -> dict[str, list]:
    """--clicks read and checked against the cases (a click file runs the torch model, or an exported folder on its
    runtime); {} without one."""
    from ..runtime.npz import CaseError
    from ..runtime.predictor import read_clicks

    if args.clicks is None:
        return {}
    try:
        clicks = read_clicks(args.clicks)
    except CaseError as error:
        raise SetupError(str(error)) from None
    names = {p.name for p in cases if not is_volume(p)}
    for name in sorted(set(clicks) - names):
        print(f"warning: {args.clicks}: no .npz case named {name!r} in {args.input}", file=sys.stderr)
    if args.backend == "auto" and not _exported(args.model):  # a compile for predict holds no prompts graph
        args.backend = "torch"
    return clicks


def _exported(model: Any) -> bool:
    """Whether `--model` names an exported (compiled) folder."""
    from ..runtime import folders

    try:
        return Path(model).is_dir() and folders.describe(model) == folders.COMPILED
    except (ValueError, OSError):
        return False


def check_classes(args: argparse.Namespace, cases: list[Path]) -> None:
    """--classes takes .npz cases and runs the torch model (compiled graphs have no class outputs)."""
    if not args.classes:
        return
    volumes = [p for p in cases if is_volume(p)]
    if volumes:
        raise SetupError(f"{volumes[0]}: --classes writes class maps into .npz outputs; expected task .npz cases only")
    if args.backend == "auto":
        args.backend = "torch"


def check_class_outputs(args: argparse.Namespace, predictor: Any) -> None:
    """A one-line SetupError when --classes meets a model without class outputs."""
    from ..runtime.engine import takes_classes

    if args.classes and not takes_classes(getattr(predictor, "engine", None)):
        raise SetupError(f"model '{args.model}' has no class outputs (num_classes 0 or a compiled/routed model); "
                         "--classes expects a torch model trained with `medsamlite train finetune --num-classes C`")


def _one_line(error: BaseException, path: Path) -> str:
    text = " ".join(str(error).split())
    return text if text.startswith(str(path)) else f"{path}: {type(error).__name__}: {text}"


def prepare_output(folder: Path) -> list[Path]:
    """The output folder, writable, without the temporary files of an earlier run that was killed.

    Returns the folders this call created (the output folder and missing parents, innermost first), so that
    a run that fails before its first case can remove them again.
    """
    created = [p for p in (folder, *folder.absolute().parents) if not p.exists()]
    writable_folder(folder)
    removed = remove_orphans(folder, ORPHANS)
    if removed:
        print(f"warning: removed {len(removed)} temporary files of an earlier interrupted run in {folder}",
              file=sys.stderr)
    return created


def remove_created(folders: list[Path]) -> None:
    """Remove the folders `prepare_output` created, innermost first, while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): what is in it is not ours to remove
            return


def open_timings(path: Path, append: bool) -> Any:
    """timings.csv for writing: truncated, or appended to (rows of an older column set rewritten under ours).

    UTF-8, with a case name that is not (a file name's raw bytes) written back as those bytes.
    """
    text_options = {"newline": "", "encoding": "utf-8", "errors": "surrogateescape"}
    if not append or not path.exists() or path.stat().st_size == 0:
        f = open(path, "w", **text_options)
        csv.DictWriter(f, fieldnames=CSV_FIELDS).writeheader()
        return f
    with open(path, **text_options) as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        fields = tuple(reader.fieldnames or ())
    if fields != CSV_FIELDS:  # written by another version: keep its rows, missing columns empty
        with atomic_file(path) as out:
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            out.write(text.getvalue().encode("utf-8", "surrogateescape"))
    return open(path, "a", **text_options)


def engine_summary(predictor: Any, requested_precision: str | None) -> dict[str, Any]:
    """run.json's account of what ran: engine kind ("openvino", "torch", "routed", ...), precision, threads, groups;
    for one engine also its decoder's threshold (`factorised_from`, "auto" only) and how many images or slices
    each decoder ran (`decoded`)."""
    from ..runtime.engine import describe
    from ..runtime.routed import RoutedPredictor

    if not isinstance(predictor, RoutedPredictor):
        engine = describe(predictor.engine)
        auto = getattr(predictor.engine, "decoder", None) == AUTO
        threshold = getattr(predictor.engine, "factorised_from", None) if auto else None
        return {"engine": engine["backend"], "model_name": predictor.engine.config.name,
                "precision": engine["precision"] or requested_precision, "runtime_threads": engine["threads"],
                "groups": None, "factorised_from": threshold, "decoded": dict(sorted(predictor.decoded.items()))}
    served = predictor.served
    precisions = sorted({str(s["precision"]) for s in served.values()})
    # nothing loaded (every case skipped): the precision asked for; else what the groups' engines ran at
    precision = precisions[0] if len(precisions) == 1 else "mixed" if precisions else requested_precision or "default"
    router = predictor.router
    return {"engine": "routed", "precision": precision,
            "runtime_threads": next((s["threads"] for s in served.values() if s.get("threads")), None),
            "groups": {g: list(m) for g, m in router.groups.items()}, "fallback": router.fallback,
            "served": served}


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
    created: list[Path] = []
    try:
        cases = input_cases(args.input, args.output)
        volumes = volume_options(args, cases)
        clicks = case_clicks(args, cases)
        check_classes(args, cases)
        created = prepare_output(args.output)
        engine = load_engine(args)
        predictor = _predictor(engine, args)
        check_class_outputs(args, predictor)
        if clicks and not hasattr(predictor, "refine"):
            raise SetupError(f"{args.clicks}: clicks need one torch model; '{args.model}' opened as a router")
        if clicks and getattr(engine, "clicks_refused", None):
            raise SetupError(f"{args.clicks}: {engine.clicks_refused}")
        if args.overlay is not None:
            writable_folder(args.overlay)
    except BaseException as error:  # a setup error, or Ctrl-C while compiling: nothing of this run stays behind
        remove_created(created)
        if not isinstance(error, SetupError):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    load_seconds = time.perf_counter() - start
    from tqdm import tqdm

    counts = {"ok": 0, "error": 0, "skipped": 0}
    slowest: tuple[float, str] = (0.0, "")
    with open_timings(args.output / TIMINGS_FILE, args.skip_existing) as f, StopAfterCase() as stop:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        bar = tqdm(cases, desc="predict", unit="case", file=sys.stderr, disable=None)
        try:
            for index, path in enumerate(bar, start=1):
                if stop.requested:
                    break
                where = f"[{index}/{len(cases)}] {path.name}"
                if args.skip_existing and output_path(path, args.output).exists():
                    counts["skipped"] += 1
                    tqdm.write(f"predict {where}: skipped (output exists)", file=sys.stderr)
                    continue
                row = _predict_case(predictor, path, args.output, args.overlay, volumes, clicks.get(path.name),
                                    args.classes)
                counts[row["status"]] += 1
                writer.writerow(row)
                f.flush()
                if row["status"] == "ok":
                    slowest = max(slowest, (float(row["seconds"]), path.name))
                    if bar.disable:  # no bar on a pipe or log file: one plain line per case instead
                        group = f" [{row['group']}]" if row["group"] else ""
                        print(f"predict {where}{group}: ok {float(row['seconds']):.2f} s", file=sys.stderr, flush=True)
        except KeyboardInterrupt:  # a second SIGINT: the current case is dropped (its output is never half-written)
            pass
        finally:
            bar.close()
    finished = sum(counts.values())
    interrupted = stop.requested and finished < len(cases)
    total = time.perf_counter() - start
    summary = {"model": str(args.model), **engine_summary(predictor, args.precision),
               "threads": args.threads, "decoder": getattr(args, "decoder", AUTO), "overlap": args.overlap, "load_seconds": round(load_seconds, 4),
               "run_seconds": round(total, 4), "cases": len(cases), "done": counts["ok"],
               "failed": counts["error"], "skipped": counts["skipped"], "interrupted": interrupted}
    with atomic_file(args.output / RUN_FILE) as out:
        out.write((json.dumps(summary, indent=2) + "\n").encode())
    slow = f"; slowest {slowest[1]} ({slowest[0]:.2f} s)" if slowest[1] else ""
    print(f"predict: {counts['ok']} done, {counts['error']} failed, {counts['skipped']} skipped of {len(cases)} "
          f"cases in {total:.1f} s{slow}" + (" (stopped by SIGINT)" if interrupted else ""), file=sys.stderr)
    if counts["error"]:
        print(f"error: {counts['error']} of {len(cases)} cases failed", file=sys.stderr)
    if interrupted:
        return INTERRUPTED
    return 1 if counts["error"] else 0


def _predictor(engine: Any, args: argparse.Namespace) -> Any:
    from ..runtime.routed import as_predictor

    options = {"chunk_size": args.chunk_size, "overlap": args.overlap, "cache_slices": args.cache_slices,
               "cache_mb": args.cache_mb, "encode_batch": args.encode_batch}
    try:
        return as_predictor(engine, **options)
    except ValueError as error:  # an option out of range, e.g. --encode-batch 0
        raise SetupError(str(error)) from None


def _predict_volume(predictor: Any, path: Path, out_path: Path, options: dict[str, Any]) -> Any:
    """A NIfTI file or DICOM series through the predictor of its router group (a plain predictor: itself)."""
    from ..runtime.volumes import predict_volume_file

    group = predictor.route(path) if hasattr(predictor, "route") else ""
    result = predict_volume_file(predictor.predictor(group) if group else predictor, path, out_path, **options)
    result.group = group
    return result


def _predict_case(predictor: Any, path: Path, output: Path, overlay: Path | None,
                  volumes: dict[str, Any] | None = None, clicks: list | None = None, classes: bool = False
                  ) -> dict[str, Any]:
    """Segment one case into `output`; its timings.csv row. One bad case never stops the others."""
    from tqdm import tqdm

    row: dict[str, Any] = {"case": path.name, "status": "ok"}
    try:
        if volumes is not None and is_volume(path):
            result = _predict_volume(predictor, path, output_path(path, output), volumes)
        else:
            result = predictor.predict_file(path, output / path.name,
                                            None if overlay is None else overlay / f"{path.stem}.png",
                                            **({"clicks": clicks} if clicks else {}),
                                            **({"classes": True} if classes else {}))
    except Exception as error:
        tqdm.write(f"error: {_one_line(error, path)}", file=sys.stderr)
        row["status"] = "error"
        return row
    for message in result.warnings:
        tqdm.write(f"warning: {message}", file=sys.stderr)
    row.update(group=result.group, kind=result.kind, shape="x".join(map(str, result.shape)), boxes=result.boxes,
               seconds=f"{result.seconds:.4f}", **{p: f"{result.phases.get(p, 0.0):.4f}" for p in PHASES})
    return row
