"""What each precision costs and buys, per model, on OpenVINO: encode latency, whole-case latency, and the
agreement of its masks with the f32 masks (DSC and NSD per case, mean and worst) on the synthetic set.

    medsamlite bench precision                                   # every model; f32, bf16 (if the CPU has it), int8
    medsamlite bench precision --models litemedsam --size 0.5 --data my_cases/

f32 is the reference; bf16 runs only where the CPU has native bf16; int8 is NNCF-quantised with
--calibration images (2D synthetic cases of other seeds, so the evaluated cases are unseen). Torch bf16
autocast (the `TorchEngine` word for the same choice) is measured beside them. Models with packaged trained
weights use them; the others use seeded random weights, whose masks are less decisive than trained ones.
`--data DIR` adds the user's own task cases (DIR/*.npz or DIR/imgs/*.npz) to the synthetic ones.
Writes precision.{csv,md,png}.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from .report import machine_header, markdown_table, write_csv, write_markdown


def bench_model(name: str):
    """The model with its packaged trained weights where it has them (real masks), else seeded random weights."""
    import torch

    from ..factory import create_model, has_pretrained
    from ..registry import get_model_config

    if has_pretrained(get_model_config(name)):
        return create_model(name, pretrained=True), "pretrained"
    torch.manual_seed(0)
    return create_model(name), "seeded random"


def synthetic_cases(size: float, seed: int) -> list:
    """One case of each 2D modality and one small 3D case."""
    from ..data.synthetic import MODALITIES_2D, make_case

    return [make_case(m, 0, seed=seed, size=size) for m in MODALITIES_2D] + [make_case("MR", 0, seed=seed, size=size,
                                                                                       depth=0.25)]


def user_cases(folder: Path) -> list:
    """The task cases in `folder` (or its imgs/), read and checked as `medsamlite predict` reads them."""
    from ..constants import find_cases
    from ..runtime.npz import read_case

    files = find_cases(folder).files
    if not files:
        raise FileNotFoundError(f"{folder}: no .npz cases (looked in {folder} and {folder / 'imgs'})")
    return [read_case(f) for f in files]


def calibration_set(model_config, size: float, n: int) -> list[np.ndarray]:
    from ..data.synthetic import MODALITIES_2D, make_case
    from ..runtime.preprocess import preprocess_image

    cases = [make_case(MODALITIES_2D[i % len(MODALITIES_2D)], i, seed=1000 + i, size=size) for i in range(n)]
    return [preprocess_image(c.imgs, model_config.input_size, model_config.normalization)[0][0] for c in cases]


def run_cases(engine, cases: list) -> tuple[list[np.ndarray], float]:
    """Label maps of every case and the median whole-case seconds."""
    from ..runtime import Predictor

    predictor = Predictor(engine)
    segs, seconds = [], []
    for case in cases:
        start = time.perf_counter()
        segs.append(predictor.predict_2d(case.imgs, case.boxes) if case.kind == "2D"
                    else predictor.predict_3d(case.imgs, case.boxes))
        seconds.append(time.perf_counter() - start)
    return segs, statistics.median(seconds)


def encode_median(engine, size: int, repeats: int) -> float:
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    engine.encode(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.encode(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def agreement(segs: list[np.ndarray], reference: list[np.ndarray], cases: list) -> dict[str, float]:
    """DSC and NSD of each case's masks against the f32 masks: mean and worst over cases."""
    from ..runtime.metrics import evaluate_case

    scores = [evaluate_case(s, r, c.spacing if c.kind == "3D" else None, zero_nsd_below_dsc=None)
              for s, r, c in zip(segs, reference, cases) if r.max() > 0]
    dsc, nsd = [s.mean_dsc for s in scores], [s.mean_nsd for s in scores]
    return {"dsc_mean": float(np.mean(dsc)), "dsc_worst": float(np.min(dsc)),
            "nsd_mean": float(np.mean(nsd)), "nsd_worst": float(np.min(nsd))}


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for row in rows:
        label = f"{row['model']}"
        marker = {"f32": "o", "bf16": "s", "int8": "^", "torch_bf16": "x"}[row["precision"]]
        left.scatter(row["encode_ms"], row["dsc_worst"], marker=marker, label=f"{label} {row['precision']}")
        right.scatter(row["case_s"], row["dsc_mean"], marker=marker)
    left.set_xlabel("encode latency (ms)"), left.set_ylabel("worst-case DSC vs f32 masks")
    right.set_xlabel("median whole-case latency (s)"), right.set_ylabel("mean DSC vs f32 masks")
    left.legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="*", help="registered model names (default: all)")
    parser.add_argument("--size", type=float, default=0.5, help="synthetic case scale (1.0 = realistic size)")
    parser.add_argument("--data", type=Path, help="a folder of your own task .npz cases, scored beside the synthetic ones")
    parser.add_argument("--calibration", type=int, default=8, help="int8 calibration images (0: skip int8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("precision-results"))


def run(args: argparse.Namespace) -> int:
    """The sweep of `args` (see `add_arguments`); writes the reports and prints the table."""
    from ..registry import list_models
    from ..export import compile, default_cache_dir
    from ..export.quantize import Int8Refused
    from ..runtime.precision import cpu_summary, cpu_supports_bf16
    from ..torch_engine import TorchEngine

    cache_dir = args.cache_dir or default_cache_dir()
    cases = synthetic_cases(args.size, seed=0) + (user_cases(args.data) if args.data else [])
    precisions = ["f32"] + (["bf16"] if cpu_supports_bf16() else []) + (["int8"] if args.calibration else [])
    rows, refused = [], []
    for name in args.models or list_models():
        model, weights = bench_model(name)
        engines = {}
        for p in precisions:
            try:
                engines[p] = compile(model, "openvino", cache_dir, p, calibration=calibration_set(
                    model.config, args.size, args.calibration) if p == "int8" else None)
            except Int8Refused as error:  # reported beside the others, not a crash
                refused.append(f"{name}: {error}")
                print(refused[-1], flush=True)
        if cpu_supports_bf16():
            engines["torch_bf16"] = TorchEngine(model, precision="bf16")
        reference, _ = run_cases(engines["f32"], cases)
        for precision, engine in engines.items():
            segs, case_s = run_cases(engine, cases)
            row = {"model": name, "weights": weights, "precision": precision,
                   "runs_at": getattr(engine, "precision", precision),
                   "int8_error": getattr(engine, "meta", {}).get("int8_embedding_error", ""),
                   "encode_ms": 1000 * encode_median(engine, model.config.input_size, args.repeats),
                   "case_s": case_s, **agreement(segs, reference, cases)}
            rows.append(row)
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "precision.csv")
    names = ", ".join(c.name for c in cases)
    header = machine_header() + [f"{len(cases)} cases (synthetic at size {args.size}, then --data; {names}); "
                                 "agreement = DSC/NSD (tolerance 2) of the masks against OpenVINO f32 masks; "
                                 f"int8 calibrated on {args.calibration} other synthetic images; median of "
                                 f"{args.repeats} encodes", *(f"refused: {r}" for r in refused)]
    columns = ["model", "weights", "precision", "runs_at", "int8_error", "encode_ms", "case_s",
               "dsc_mean", "dsc_worst", "nsd_mean", "nsd_worst"]
    table = markdown_table([{**r, **{k: f"{r[k]:.4f}" for k in columns[7:]}} for r in rows], columns)
    write_markdown(args.out / "precision.md", "Precision: latency and mask agreement with f32", header, table)
    plot(rows, args.out / "precision.png", cpu_summary())
    print((args.out / "precision.md").read_text())
    return 0

