"""Training throughput (images/s, masks/s) of `medsamlite train` on this machine, one factor at a time.

    medsamlite bench train                                  # every run below, 4 steps each
    medsamlite bench train --runs finetune distill-2proc --steps 6

Runs: fine-tuning litemedsam and distilling a RepViT-M0.6 student from litemedsam, each at a baseline
(1 process, 1 thread, f32, K = 1 target per image / no teacher cache) and with one factor changed:
2 processes of 1 thread each (`accelerate launch --multi_gpu`, which on a machine without a GPU starts
torch.distributed processes on CPU with gloo), K = 5 targets per image, the teacher cache (a first
run fills it, the measured run reads it), bf16 autocast. Every run is the real command line in a
subprocess on synthetic cases; its rates are the mean of the per-step rates in its log.csv after the
first (warm-up) step. Weights are seeded random (speed does not depend on them).
Writes train.{csv,md,png}.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .report import machine_header, markdown_table, stacked_bars, write_csv, write_markdown

BASE = {"finetune": ["--model", "litemedsam", "--targets-per-image", "0", "--freeze", "prompt_encoder"],
        "distill": ["--student", "repvit_m0_6_medsam", "--teacher", "litemedsam"]}
# name: (mode, processes, extra arguments)
RUNS = {
    "finetune": ("finetune", 1, []),
    "finetune-2proc": ("finetune", 2, []),
    "finetune-k5": ("finetune", 1, ["--targets-per-image", "5"]),
    "finetune-bf16": ("finetune", 1, ["--precision", "bf16"]),
    "distill": ("distill", 1, []),
    "distill-2proc": ("distill", 2, []),
    "distill-cache": ("distill", 1, ["--teacher-cache", "{cache}"]),
    "distill-bf16": ("distill", 1, ["--precision", "bf16"]),
}
COLUMNS = ("run", "mode", "processes", "precision", "targets", "teacher_cache", "steps", "batch", "images_per_s",
           "masks_per_s", "status")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="*", choices=list(RUNS), help="which runs (default: all)")
    parser.add_argument("--steps", type=int, default=3, help="optimiser steps per run (the first is warm-up)")
    parser.add_argument("--batch-size", type=int, default=2, help="per process")
    parser.add_argument("--cases", type=int, default=1,
                        help="synthetic cases per 2D modality (1: no validation split, as in a pure throughput run)")
    parser.add_argument("--size", type=float, default=0.25, help="synthetic case scale")
    parser.add_argument("--out", type=Path, default=Path("train-results"))


def launcher(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def rates(log: Path) -> tuple[float, float]:
    """Mean images/s and masks/s of a run's steps after the first."""
    with log.open() as f:
        rows = [r for r in csv.DictReader(f) if r["phase"] == "train"][1:]
    return (statistics.mean(float(r["images_per_s"]) for r in rows),
            statistics.mean(float(r["masks_per_s"]) for r in rows))


def one_run(name: str, data: Path, work: Path, args: argparse.Namespace) -> dict:
    mode, processes, extra = RUNS[name]
    extra = [e.format(cache=work / "teacher-cache") for e in extra]
    out = work / name

    def command(output: Path) -> list[str]:
        return [*launcher(processes), "-m", "medsamlite", "train", mode, str(data), *BASE[mode], *extra, "--output",
                str(output), "--max-steps", str(args.steps), "--epochs", "1000", "--batch-size",
                str(args.batch_size), "--threads", "1", "--no-progress", "--save-every", "0"]

    env = dict(os.environ, OMP_NUM_THREADS="1")
    row = {"run": name, "mode": mode, "processes": processes,
           "precision": extra[extra.index("--precision") + 1] if "--precision" in extra else "f32",
           "targets": int(extra[-1]) if "--targets-per-image" in extra else (1 if mode == "finetune" else 0),  # 0: none
           "teacher_cache": "--teacher-cache" in extra, "steps": args.steps, "batch": args.batch_size}
    if "--teacher-cache" in extra:  # fill the cache first; the measured run reads it
        subprocess.run(command(work / f"{name}-fill"), env=env, capture_output=True, text=True)
    done = subprocess.run(command(out), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        errors = [line for line in lines if "Error" in line] or lines  # the launcher's summary hides the cause
        return {**row, "status": f"failed: {errors[-1][:160] if errors else done.returncode}"}
    images, masks = rates(out / "log.csv")
    return {**row, "images_per_s": images, "masks_per_s": masks, "status": "ok"}


def run(args: argparse.Namespace) -> int:
    from ..data.synthetic import MODALITIES_2D, write_dataset

    header = machine_header()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "cases"
        write_dataset(data, MODALITIES_2D, args.cases, size=args.size, seed=0)
        for name in args.runs or list(RUNS):
            rows.append(one_run(name, data, Path(tmp), args))
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    header += [f"{args.cases} synthetic cases per 2D modality at size {args.size}; {args.steps} steps per run "
               f"(rates: mean over steps 2..{args.steps}), batch {args.batch_size} per process, 1 thread per "
               "process; seeded random weights; each run one `medsamlite train` command line"]
    write_csv(rows, args.out / "train.csv")
    write_markdown(args.out / "train.md", "Training throughput", header, markdown_table(rows, COLUMNS))
    ok = [r for r in rows if r["status"] == "ok"]
    stacked_bars(args.out / "train.png", [r["run"] for r in ok], {"images/s": [r["images_per_s"] for r in ok]},
                 "medsamlite train: images/s (masks/s in train.md)", ylabel="images/s")
    print((args.out / "train.md").read_text())
    return 0 if len(ok) == len(rows) else 1
