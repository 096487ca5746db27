"""The `train` bench suite: registered, its runs name real command lines, its rates come from log.csv."""
from __future__ import annotations

import argparse

import pytest

from medsamlite.benchmark import train as suite
from medsamlite.cli import bench


def test_suite_is_registered_and_parses():
    assert bench.SUITES["train"][0] == "medsamlite.benchmark.train"
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["train", "--runs", "finetune", "distill-cache", "--steps", "3"])
    assert args.runs == ["finetune", "distill-cache"] and args.steps == 3


def test_rates_skip_the_warm_up_step(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("phase,epoch,step,loss,lr,images_per_s,masks_per_s,val_loss,val_dsc,seconds\n"
                   "train,0,1,1,0,1.0,2.0,,,1\ntrain,0,2,1,0,4.0,8.0,,,2\nepoch,0,2,1,,,,0.5,0.5,2\n"
                   "train,0,3,1,0,6.0,12.0,,,3\n")
    assert suite.rates(log) == pytest.approx((5.0, 10.0))


def test_two_processes_use_torch_distributed_on_cpu():
    assert suite.launcher(1)[1:] == []
    assert "--multi_gpu" in suite.launcher(2) and "--cpu" not in suite.launcher(2)
