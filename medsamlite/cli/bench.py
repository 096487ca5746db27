"""`medsamlite bench [SUITE]`: the benchmark suites, each one module of `medsamlite.benchmark`.

`compare` (the default: `medsamlite bench` with no suite, the main job) runs the trained model on each backend
and times every encoder, or with `--models` ranks models on DSC, NSD, runtime and memory;
`precision` measures every precision the CPU offers against f32; `latency` the encoders per backend; `shapes`
whole `predict` processes on the task's case shapes; `train`
and `data` the training paths; `fewshot` runs the k-shot adaptation protocol; `interactive` the click protocol. Each suite writes CSV + markdown + PNG.
"""
from __future__ import annotations

import argparse
import importlib

SUITES = {
    "compare": ("medsamlite.benchmark.compare", "the main job: litemedsam per backend + every encoder's speed; --models: the full comparison (the default)"),
    "precision": ("medsamlite.benchmark.precision", "f32 / bf16 / int8: encode latency and mask agreement with f32"),
    "latency": ("medsamlite.benchmark.latency", "encoder latency per backend and whole-process cold start"),
    "shapes": ("medsamlite.benchmark.shapes", "whole-process `predict` time per case on the task's case shapes, per phase"),
    "train": ("medsamlite.benchmark.train", "training images/s and masks/s: processes, K targets, teacher cache, bf16"),
    "data": ("medsamlite.benchmark.data", "training data: items/s of the .npz and prepared paths, index open, prepare"),
    "fewshot": ("medsamlite.benchmark.fewshot", "k-shot adaptation per modality group: DSC/NSD against k per method"),
    "interactive": ("medsamlite.benchmark.interactive", "the click protocol: DSC/NSD after the boxes and each of up "
                    "to 5 simulated clicks, DSC_AUC, NSD_AUC, seconds per click"),
}
DEFAULT_SUITE = "compare"


def prepare_argv(argv: list[str]) -> list[str]:
    """`bench ...` without a suite name runs the default suite."""
    if argv and argv[0] in (*SUITES, "-h", "--help"):
        return argv
    return [DEFAULT_SUITE, *argv]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="suite", required=True)
    for name, (module, help_) in SUITES.items():
        p = sub.add_parser(name, help=help_, description=help_)
        importlib.import_module(module).add_arguments(p)


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(SUITES[args.suite][0]).run(args) or 0)
