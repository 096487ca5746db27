"""Whole-process time of `medsamlite predict` on synthetic cases of the task's shapes, one fresh process per case.

Like the task's timing (one container run per case): interpreter start, imports, model load, inference and
output writing all count. The cases are generated (smooth background, one bright ellipse or ellipsoid per
box), in the shapes and box layouts of the reference runtime table:

    2D 480x560x3, 1 box; 2D 320x640x3, 34 boxes; 3D 64x290x320, 6 boxes each over 20 slices;
    2D 1024x1024x3, 200 boxes (microscopy-like: where the decoder's cost per box decides)
    --large adds 2D 1920x2560x3 with 241 boxes, 3D 264x200x200 with 1 box, 3D 287x512x512 with 6 boxes

    medsamlite bench shapes --model litemedsam --pretrained --backend torch --precision f32
    medsamlite bench shapes --pretrained --backend openvino --decoder factorised --only 2DBox_Microscope_synth

`decode_ms_per_box` is the predictor's decode phase over the case's boxes (3D: over box-slices decoded).

Writes <out>/case_shapes.csv (every run), case_shapes.md (median per case, CPU in the header) and
case_shapes.png (median per phase) where matplotlib is installed.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constants import PHASES
from .report import machine_header, markdown_table, stacked_bars, write_csv, write_markdown
from .worker import worker_env


@dataclass(frozen=True)
class Shape:
    name: str
    shape: tuple[int, ...]
    boxes: int
    z_span: int = 0  # slices per 3D box

    @property
    def kind(self) -> str:
        return self.name[:2]  # the task's file-name prefix, 2DBox_ / 3DBox_

    @property
    def decodes(self) -> int:
        """Box decodes the case takes: one per box, per slice of its span in 3D."""
        return self.boxes * max(self.z_span, 1)

    @property
    def label(self) -> str:
        size = "x".join(map(str, self.shape if self.kind == "3D" else self.shape[:2]))
        return f"{self.kind} {size}, {self.boxes} box{'es' if self.boxes > 1 else ''}"


SHAPES = (Shape("2DBox_Endoscopy_synth", (480, 560, 3), 1), Shape("2DBox_X-Ray_synth", (320, 640, 3), 34),
          Shape("3DBox_MR_synth", (64, 290, 320), 6, z_span=20), Shape("2DBox_Microscope_synth", (1024, 1024, 3), 200))
LARGE = (Shape("2DBox_Microscope_large_synth", (1920, 2560, 3), 241), Shape("3DBox_PET_synth", (264, 200, 200), 1, 66),
         Shape("3DBox_CT_synth", (287, 512, 512), 6, z_span=72))


def _grid_boxes(h: int, w: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n boxes [x0, y0, x1, y1] in a grid of cells covering the image, each shrunk by a random margin."""
    cols = math.ceil(math.sqrt(n * w / h))
    rows = math.ceil(n / cols)
    ch, cw = h / rows, w / cols
    boxes = []
    for i in range(n):
        r, c = divmod(i, cols)
        my, mx = rng.uniform(0.1, 0.3, 2) * (ch, cw)
        boxes.append([c * cw + mx, r * ch + my, (c + 1) * cw - mx, (r + 1) * ch - my])
    return np.floor(boxes).astype(np.int64)


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 6.3, 2)
    return 50 + 15 * np.sin(xx / 37 + phase[0]) + 15 * np.cos(yy / 23 + phase[1])


def _ellipse(h: int, w: int, box: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = box
    yy, xx = np.ogrid[0:h, 0:w]
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2 - 2, 1), max((y1 - y0) / 2 - 2, 1)
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def synth_case(shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """imgs and boxes of one synthetic case in the task's format (uint8; boxes int64)."""
    rng = np.random.default_rng(seed)
    h, w = (shape.shape[1:] if shape.kind == "3D" else shape.shape[:2])
    boxes2d = _grid_boxes(h, w, shape.boxes, rng)
    image = _background(h, w, rng)
    for box in boxes2d:
        image[_ellipse(h, w, box)] += rng.uniform(80, 150)
    if shape.kind == "2D":
        noise = rng.normal(0, 6, (h, w, 3)).astype(np.float32)
        return {"imgs": np.clip(image[..., None] + noise, 0, 255).astype(np.uint8), "boxes": boxes2d}
    depth = shape.shape[0]
    starts = np.linspace(0, depth - shape.z_span, shape.boxes).astype(np.int64)
    volume = np.empty(shape.shape, np.uint8)
    background = _background(h, w, rng)
    for z in range(depth):
        slice_ = background.copy()
        for box, z0 in zip(boxes2d, starts):
            if z0 <= z < z0 + shape.z_span:  # ellipsoid: the ellipse shrinks away from the box's middle
                t = 1 - abs((z - z0) - (shape.z_span - 1) / 2) / shape.z_span
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                half = np.array([(box[2] - box[0]) / 2 * t, (box[3] - box[1]) / 2 * t])
                slice_[_ellipse(h, w, np.array([cx - half[0], cy - half[1], cx + half[0], cy + half[1]]))] += 110
        volume[z] = np.clip(slice_ + rng.normal(0, 6, (h, w)), 0, 255).astype(np.uint8)
    boxes = np.stack([boxes2d[:, 0], boxes2d[:, 1], starts, boxes2d[:, 2], boxes2d[:, 3],
                      starts + shape.z_span - 1], axis=1)
    return {"imgs": volume, "boxes": boxes, "spacing": np.array([1.0, 1.0, 1.0])}


def predict_command(args: argparse.Namespace, case: Path, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "medsamlite", "predict", "-i", str(case), "-o", str(out), "--model", args.model]
    for flag in ("checkpoint", "backend", "precision", "threads", "encode_batch", "decoder"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return cmd + (["--pretrained"] if args.pretrained else [])


def run_once(args: argparse.Namespace, case: Path, out: Path, decodes: int) -> dict:
    """One fresh `medsamlite predict` process: wall time, peak RSS and the phases it reported."""
    env = worker_env()
    log = out.with_suffix(".log")
    out.mkdir(parents=True, exist_ok=True)
    with log.open("w") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(predict_command(args, case, out), stdout=subprocess.DEVNULL, stderr=stderr,
                                   env=env, cwd=out)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{case.name}: medsamlite predict failed:\n{log.read_text()[-3000:]}")
    run = json.loads((out / "run.json").read_text())
    with (out / "timings.csv").open() as f:
        phases = next(csv.DictReader(f))
    row = {"wall_s": wall, "startup_s": wall - run["run_seconds"], "load_s": run["load_seconds"],
           **{f"{p}_s": float(phases[p]) for p in PHASES}, "peak_rss_mb": usage.ru_maxrss / 1024,
           "decode_ms_per_box": 1000 * float(phases["decode"]) / decodes,
           "engine": run["engine"]}
    return row


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="litemedsam", help="registered name or exported folder")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint")
    weights.add_argument("--pretrained", action="store_true")
    parser.add_argument("--backend", choices=("torch", "openvino", "onnxruntime"))
    parser.add_argument("--precision", choices=("f32", "bf16", "auto"))
    parser.add_argument("--threads", type=int)
    parser.add_argument("--encode-batch", type=int, help="passed to predict (3D slices per encoder call)")
    parser.add_argument("--decoder", choices=("auto", "dense", "factorised"), help="passed to predict (default auto)")
    parser.add_argument("--large", action="store_true", help="add the three large shapes (minutes on torch)")
    parser.add_argument("--only", nargs="*", help="case names to run (default: all)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per case (the median is tabled)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (fills runtime caches)")
    parser.add_argument("--note", default="", help="a line added to the header (e.g. where the weights came from)")
    parser.add_argument("--out", type=Path, default=Path("shapes-results"))


def run(args: argparse.Namespace) -> int:
    shapes = [s for s in SHAPES + (LARGE if args.large else ()) if not args.only or s.name in args.only]
    header = machine_header()
    tag = (f"{Path(args.model).name}, backend {args.backend or 'default'}, precision {args.precision or 'default'}, "
           f"decoder {args.decoder or 'auto'}")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="case_shapes_") as folder:
        tmp = Path(folder)
        cases = {}
        for shape in shapes:
            cases[shape] = tmp / "in" / f"{shape.name}.npz"
            cases[shape].parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(cases[shape], **synth_case(shape))
        for i in range(args.warmup):
            run_once(args, cases[shapes[0]], tmp / f"warmup{i}", shapes[0].decodes)
        for shape in shapes:
            for r in range(args.repeats):
                result = run_once(args, cases[shape], tmp / f"{shape.name}_{r}", shape.decodes)
                rows.append({"model": args.model, "backend": args.backend or "default",
                             "precision": args.precision or "default", "decoder": args.decoder or "auto",
                             "case": shape.name, "shape": shape.label,
                             "run": r, **result})
                print(f"{shape.label}: {result['wall_s']:.2f} s", file=sys.stderr)
    write_csv(rows, args.out / "case_shapes.csv")
    medians = []
    for shape in shapes:
        runs = [r for r in rows if r["case"] == shape.name]
        medians.append({"case": shape.label, "runs": len(runs),
                        **{k: statistics.median(r[k] for r in runs) for k in runs[0]
                           if k.endswith(("_s", "_mb", "_per_box"))}})
    columns = ["case", "runs", "wall_s", "startup_s", "load_s", *[f"{p}_s" for p in PHASES], "decode_ms_per_box",
               "peak_rss_mb"]
    engine = rows[0]["engine"] if rows else "?"
    header += [f"Model: {tag} ({engine}); {args.warmup} warm-up run(s), median of {args.repeats} per case",
               "wall_s: the whole `medsamlite predict` process; startup_s: interpreter + imports up to the CLI's "
               "run(); load_s: model build/load/compile; the phase columns are the predictor's own timers"]
    header += [args.note] if args.note else []
    write_markdown(args.out / "case_shapes.md", "Case-shape benchmark", header, markdown_table(medians, columns))
    parts = {"startup + load": [m["startup_s"] + m["load_s"] for m in medians],
             **{p: [m[f"{p}_s"] for m in medians] for p in PHASES}}
    stacked_bars(args.out / "case_shapes.png", [m["case"] for m in medians], parts, f"{tag}\n{header[0]}")
    print((args.out / "case_shapes.md").read_text())
    return 0
