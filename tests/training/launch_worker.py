"""Run several `medsamlite train` command lines in one process group (launched by accelerate or torchrun).

    accelerate launch --multi_gpu --num_processes 2 tests/training/launch_worker.py RUNS.json

RUNS.json lists {"args": [...]} (a command line), {"kill_after_step": N, "args": [...]} (SIGKILL rank 0
once its N-th optimiser step is done: a run killed between checkpoints) and {"resume_copy": [SRC, DST]}
(rank 0 copies a finished output folder without its models and newest checkpoint, for a resume to
repeat the end). Any failure ends the process at once, so the launcher stops the other ranks instead of
leaving them waiting.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

from medsamlite.cli import main
from medsamlite.training import loop


def kill_after(steps: int) -> None:
    """SIGKILL rank 0 when the loop reduces its `steps`-th optimiser step (the step is done, not saved)."""
    reduce, count = loop._Meter.reduce, [0]

    def killing(self, accelerator):
        row = reduce(self, accelerator)
        count[0] += 1
        if count[0] == steps and accelerator.is_main_process:
            os.kill(os.getpid(), signal.SIGKILL)
        return row
    loop._Meter.reduce = killing


def resume_copy(src: str, dst: str) -> None:
    """`src` without models (so a resume must write them) and with each run's newest checkpoint dropped."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "config.json", "daft.json"))
    for checkpoints in Path(dst).rglob("checkpoints"):
        shutil.rmtree(sorted(checkpoints.iterdir())[-1])


def run(path: str) -> None:
    with open(path) as f:
        runs = json.load(f)
    for spec in runs:
        if "resume_copy" in spec:
            if int(os.environ.get("RANK", "0")) == 0:
                resume_copy(*spec["resume_copy"])
            torch.distributed.barrier()  # the process group the runs before set up
            continue
        if "kill_after_step" in spec:
            kill_after(spec["kill_after_step"])
        started = time.perf_counter()
        try:
            code = main(["train", *spec["args"], "--threads", "1", "--no-progress"])
        except BaseException:
            traceback.print_exc()
            code = 1
        if code:
            sys.stderr.write(f"failed: {spec['args']}\n")
            sys.stderr.flush()
            os._exit(1)
        print(f"run took {time.perf_counter() - started:.1f} s: {' '.join(spec['args'][:1] + spec['args'][-4:])}")


if __name__ == "__main__":
    run(sys.argv[1])
