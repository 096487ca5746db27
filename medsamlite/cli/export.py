"""`medsamlite export`: a model on a CPU runtime, written as a folder that `predict --model DIR` opens."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..constants import PRECISIONS, RUNTIME_BACKENDS
from .errors import one_line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="registered model name, or a folder written by medsamlite.save_model")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", help="weights to load (any supported checkpoint layout)")
    weights.add_argument("--pretrained", action="store_true", help="the model's packaged trained weights")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow a --checkpoint that is a whole pickled model: reading it runs code from the file")
    parser.add_argument("--backend", choices=RUNTIME_BACKENDS, default="openvino")
    parser.add_argument("--precision", choices=PRECISIONS, default="f32",
                        help="f32: exact on every CPU; bf16: native bf16 where the CPU has it (else f32, "
                             "with a warning); int8: NNCF-quantised encoder (needs --calibration); "
                             "auto: the runtime's default")
    parser.add_argument("--calibration", type=Path,
                        help="int8 only: a task .npz case or a folder of them (2D images, middle 3D slices)")
    parser.add_argument("--calibration-size", type=int, default=32, help="int8 only: images used at most")
    parser.add_argument("--cache-dir", type=Path, help="compile cache (default $MEDSAMLITE_CACHE or ~/.cache)")
    parser.add_argument("--measure-decoders", action="store_true",
                        help="time both decoders on this CPU and record from how many boxes `--decoder auto` runs "
                             "the factorised one (config.json `factorised_from`; run it on an idle machine)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="new folder to write")


def calibration_images(path: Path, size: int, normalization: str, limit: int) -> list[np.ndarray]:
    """Preprocessed encoder inputs from task .npz cases: each 2D image, or the middle slice of a 3D volume."""
    from ..constants import find_cases
    from ..runtime.preprocess import preprocess_image

    files = find_cases(path).files
    if not files:
        raise FileNotFoundError(f"{path}: no .npz cases for int8 calibration")
    images = []
    for file in files[:limit]:
        with np.load(file) as case:
            if "imgs" not in case:
                raise KeyError(f"{file}: no 'imgs' array (expected a task .npz case)")
            imgs = case["imgs"]
        image = imgs[imgs.shape[0] // 2] if imgs.ndim == 3 and imgs.shape[-1] != 3 else imgs
        images.append(preprocess_image(image, size, normalization)[0])
    return images


def build_model(args: argparse.Namespace):
    """The torch model named by `--model` with `--checkpoint`/`--pretrained` weights."""
    from ..factory import create_model, load_model

    if Path(args.model).is_dir():
        if args.checkpoint or args.pretrained:
            raise SystemExit(f"--model {args.model} is a saved model folder: it carries its own weights")
        return load_model(args.model)
    return create_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained,
                        trust_checkpoint=args.trust_checkpoint)


def run(args: argparse.Namespace) -> int:
    from ..export.compile import check_export_directory

    if (args.precision == "int8") != (args.calibration is not None):
        raise SystemExit("--precision int8 and --calibration go together")
    try:
        check_export_directory(args.output)  # before the model loads and compiles
        directory, name = _export(args)
    except (OSError, ValueError, KeyError, RuntimeError) as error:  # CheckpointError, IntegrityError included
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    print(f"exported {name} ({args.backend}, {args.precision}) to {directory}")
    if getattr(args, "measure_decoders", False):
        from ..runtime.decoders import measure_folder

        threshold = measure_folder(directory)
        print(f"measured: the factorised decoder from {threshold} boxes per image on this CPU (recorded in "
              f"{directory / 'config.json'})")
    return 0


def _export(args: argparse.Namespace) -> tuple[Path, str]:
    from ..export import export

    model = build_model(args)
    calibration = None
    if args.calibration is not None:
        config = model.config
        calibration = calibration_images(args.calibration, config.input_size, config.normalization,
                                         args.calibration_size)
    directory = export(model, args.output, backend=args.backend, precision=args.precision,
                       cache_dir=args.cache_dir, calibration=calibration)
    return directory, model.config.name
