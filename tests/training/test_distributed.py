"""Acceptance: the CLI on 2 CPU processes (gloo) — one log, one checkpoint, run.json, every rank's weights equal
rank 0's (the loop gathers each rank's weight digest into run.json and fails on a mismatch), and 2 processes x
batch B equal 1 process x batch 2B for a model without batch statistics in training (decoder only).

accelerate 1.16's `accelerate launch --cpu --num_processes N` starts ONE process unless MPI is set up
(`--mpirun_hostfile`); `--multi_gpu` on a machine without a GPU starts N torch.distributed processes that
fall back to CPU and gloo, as `torchrun` does. Both launchers are exercised here.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from medsamlite.checkpoints import save_model
from medsamlite.factory import build_model, load_model
import tiny

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    tiny.register()
    tiny.write_cases(root / "cases", 10)  # 8 training cases after the validation split
    torch.manual_seed(0)
    save_model(build_model(tiny.CONFIG), root / "tiny")
    save_model(build_model(tiny.CONFIG.replace(input_size=128)), root / "teacher")
    env = dict(os.environ, PYTHONPATH=f"{tiny.sitecustomize(root / 'site')}{os.pathsep}{REPO}", OMP_NUM_THREADS="1")
    return root, env


def launch(launcher: list[str], args: list[str], env: dict) -> None:
    out = subprocess.run([*launcher, "-m", "medsamlite", "train", *args, "--threads", "1", "--no-progress"],
                         capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def check_run(out: Path, steps: int) -> dict:
    with (out / "log.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["phase"] == "train"]
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))  # one log, written by rank 0 alone
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{steps:08d}"]
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["steps"] == steps and run["distributed"].endswith("MULTI_CPU")
    assert len(run["rank_digests"]) == 2 and len(set(run["rank_digests"])) == 1
    return run


def test_finetune_on_two_processes_equals_one_process_with_the_double_batch(setup, tmp_path):
    root, env = setup
    freeze = tiny.decoder_only(build_model(tiny.CONFIG))
    common = [str(root / "cases"), "--model", str(root / "tiny"), "--max-steps", "4", "--targets-per-image", "0",
              "--lr", "1e-4", "--freeze", *freeze]
    launch([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no"],
           ["finetune", *common, "--batch-size", "2", "--output", str(tmp_path / "two")], env)
    check_run(tmp_path / "two", 4)
    from medsamlite.cli import main

    assert main(["train", "finetune", *common, "--batch-size", "4", "--output", str(tmp_path / "one"),
                 "--no-progress"]) == 0
    two, one = load_model(tmp_path / "two" / "model"), load_model(tmp_path / "one" / "model")
    for (name, a), b in zip(two.state_dict().items(), one.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)
    assert not torch.equal(two.mask_decoder.iou_token.weight, load_model(root / "tiny").mask_decoder.iou_token.weight)


def test_distill_on_two_processes_with_torchrun(setup, tmp_path):
    root, env = setup
    launch([str(BIN / "torchrun"), "--nproc_per_node", "2"],
           ["distill", str(root / "cases"), "--student", str(root / "tiny"), "--teacher", str(root / "teacher"),
            "--max-steps", "4", "--epochs", "2", "--batch-size", "2", "--output", str(tmp_path / "st")], env)
    check_run(tmp_path / "st", 4)
    assert load_model(tmp_path / "st").config.input_size == 64
