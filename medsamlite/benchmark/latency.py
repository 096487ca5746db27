"""Image-encoder latency per model on torch eager, OpenVINO (f32, bf16 where the CPU has it) and ONNX Runtime,
plus whole-process cold start (first mask of one 2D case) of `medsamlite predict` on torch vs OpenVINO.

    medsamlite bench latency                                   # every registered model
    medsamlite bench latency --models litemedsam --repeats 7 --out latency-results

Engines are timed round-robin (one call of each per round) so that load from other processes hits them
alike; the ratios are the result, the absolute times belong to the CPU in the header. Models use their
packaged weights where they have them, else seeded random ones. Writes encoder_latency.{csv,md,png} under --out.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .precision import bench_model
from .plots import save_figure
from .report import machine_header, markdown_table, write_csv, write_markdown


def engines(model, cache_dir: Path, bf16: bool) -> dict[str, object]:
    """Every engine measured for one model, by column name."""
    from ..export import compile
    from ..torch_engine import TorchEngine

    out = {"torch": TorchEngine(model), "openvino_f32": compile(model, "openvino", cache_dir, "f32", decoder=None)}
    if bf16:
        out["openvino_bf16"] = compile(model, "openvino", cache_dir, "bf16", decoder=None)
    out["onnxruntime_f32"] = compile(model, "onnxruntime", cache_dir, "f32", decoder=None)
    return out


def encode_medians(runners: dict[str, object], size: int, repeats: int) -> dict[str, float]:
    """Median seconds of `encode` on a (1, 3, S, S) input, after one warm-up call each, timed round-robin."""
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for name, engine in runners.items():
        engine.encode(x)
    for _ in range(repeats):
        for name, engine in runners.items():
            start = time.perf_counter()
            engine.encode(x)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def cold_start(model_dir: Path, backend: str, case_dir: Path, out_dir: Path) -> float:
    """Wall seconds of one fresh `medsamlite predict` process on the case folder."""
    command = [sys.executable, "-m", "medsamlite", "predict", "-i", str(case_dir), "-o", str(out_dir),
               "--model", str(model_dir), "--backend", backend]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def cold_starts(model, work: Path, cache_dir: Path) -> dict[str, float]:
    """Cold start of torch (a saved model folder) and OpenVINO (an exported folder, its model cache warm)."""
    from ..checkpoints import save_model
    from ..data.synthetic import make_case
    from ..export import export

    name = model.config.name
    case = make_case("Endoscopy", 0, size=1.0)
    cases = work / "cases"
    cases.mkdir(parents=True, exist_ok=True)
    np.savez(cases / f"{case.name}.npz", imgs=case.imgs, boxes=case.boxes[:1])
    torch_dir = save_model(model, work / f"{name}_torch")
    ov_dir = export(model, work / f"{name}_openvino", "openvino", cache_dir=cache_dir)
    cold_start(ov_dir, "openvino", cases, work / "warmup")  # fills OpenVINO's model cache, as a deployment would
    return {"cold_torch": cold_start(torch_dir, "torch", cases, work / "out_torch"),
            "cold_openvino": cold_start(ov_dir, "openvino", cases, work / "out_ov")}


def bar_chart(rows: list[dict], columns: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(7, 1.5 * len(rows)), 4.5))
    width = 0.8 / len(columns)
    for i, column in enumerate(columns):
        ax.bar([r + i * width for r in range(len(rows))], [row.get(column, 0) * 1000 for row in rows], width,
               label=column)
    ax.set_xticks([r + width * (len(columns) - 1) / 2 for r in range(len(rows))], [row["model"] for row in rows],
                  rotation=15, fontsize=8)
    ax.set_ylabel("median encode latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="*", help="registered model names (default: all)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cold-start", nargs="*", default=None,
                        help="models whose cold start is measured (default: all measured models; none: empty)")
    parser.add_argument("--cache-dir", type=Path, help="compile cache (default: the per-user cache)")
    parser.add_argument("--out", type=Path, default=Path("latency-results"))


def run(args: argparse.Namespace) -> int:
    """The latency table of `args` (see `add_arguments`); writes the reports and prints the table."""
    import torch

    from ..export import default_cache_dir
    from ..registry import list_models
    from ..runtime.precision import cpu_summary, cpu_supports_bf16

    cache_dir = args.cache_dir or default_cache_dir()
    header = machine_header() + [f"torch threads {torch.get_num_threads()}; median of {args.repeats} "
                                 "round-robin calls after one warm-up; input (1, 3, S, S)"]
    bf16 = cpu_supports_bf16()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models or list_models():
            model, _ = bench_model(name)
            medians = encode_medians(engines(model, cache_dir, bf16), model.config.input_size, args.repeats)
            row = {"model": name, "input": model.config.input_size, **medians}
            row.update({f"{k}/torch": v / medians["torch"] for k, v in medians.items() if k != "torch"})
            if args.cold_start is None or name in args.cold_start:
                row.update(cold_starts(model, Path(tmp) / name, cache_dir))
            rows.append(row)
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "encoder_latency.csv")
    columns = [c for c in rows[0] if c not in ("model", "input")]
    table = markdown_table([{**r, **{c: r[c] * (1 if "/" in c else 1000) for c in columns if "cold" not in c}}
                            for r in rows], ["model", "input", *columns])
    write_markdown(args.out / "encoder_latency.md", "Encoder latency (ms; ratios to torch eager; cold start s)",
                   header, table)
    bar_chart(rows, [c for c in medians], args.out / "encoder_latency.png", cpu_summary())
    print((args.out / "encoder_latency.md").read_text())
    return 0

