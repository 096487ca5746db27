"""`medsamlite bench`: compare models on DSC, NSD, runtime and peak memory (CSV, markdown, PNG plots).

With no arguments it generates a small synthetic set and benchmarks every registered model on it.
`--precision-sweep` instead measures every precision the CPU offers against f32 (`benchmark/precision.py`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..constants import BACKENDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="results folder (default ./bench-results)")
    parser.add_argument("--models", nargs="+", help="registered model names (default: all; --small: litemedsam "
                                                    "and repvit_m0_6_medsam)")
    parser.add_argument("--checkpoints", nargs="+", default=[], metavar="MODEL=PATH",
                        help="trained weights for a model (any supported layout); without them a model with no "
                             "packaged weights runs with random weights, for speed only")
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    parser.add_argument("--data", type=Path, help="a folder with imgs/*.npz and gts/*.npz (default: generate a "
                                                  "synthetic set under OUT/data)")
    parser.add_argument("--small", action="store_true", default=os.environ.get("MEDSAMLITE_BENCH_SMALL") == "1",
                        help="tiny synthetic cases and two models, for CI (also MEDSAMLITE_BENCH_SMALL=1)")
    parser.add_argument("--precision", choices=("f32", "bf16", "auto"), default="f32")
    parser.add_argument("--threads", type=int, help="CPU threads of the runtime (default: its own choice)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data and random-weight initialisation")
    parser.add_argument("--size", type=float, help="synthetic image scale (default 0.5, --small 0.15; 1.0 = realistic)")
    parser.add_argument("--depth", type=float, help="synthetic 3D slice-count scale (default 0.17: 4 slices; 1.0 = "
                                                    "16-24 slices)")
    parser.add_argument("--precision-sweep", action="store_true",
                        help="per model and precision (f32, bf16 where the CPU has it, int8, torch bf16): encode and "
                             "whole-case latency and mask agreement with f32, into OUT/precision/; uses --models, "
                             "--size (default 0.5) and --data (your own cases, no gts needed)")


def parse_checkpoints(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        model, sep, path = item.partition("=")
        if not sep or not model or not path:
            raise ValueError(f"--checkpoints {item!r}; expected MODEL=PATH")
        if not Path(path).exists():
            raise ValueError(f"--checkpoints {item!r}: {path}: no such file")
        pairs[model] = path
    return pairs


def run(args: argparse.Namespace) -> int:
    if args.precision_sweep:
        return precision_sweep(args)
    from ..benchmark.compare import BenchConfig, BenchError, markdown, run_bench

    try:
        checkpoints = parse_checkpoints(args.checkpoints)
        config = BenchConfig(out=args.out, models=args.models, checkpoints=checkpoints, backend=args.backend,
                             data=args.data, small=args.small, precision=args.precision, threads=args.threads,
                             seed=args.seed, size=args.size, depth=args.depth)
        unknown = sorted(set(checkpoints) - set(config.model_names()))
        if unknown:
            raise ValueError(f"--checkpoints names models that are not benchmarked: {', '.join(unknown)}")
        if args.models:
            from ..registry import list_models

            missing = [m for m in args.models if m not in list_models()]
            if missing:
                raise ValueError(f"unknown model(s) {', '.join(missing)}; expected some of {', '.join(list_models())}")
        start = time.perf_counter()
        result = run_bench(config, progress=lambda message: print(f"bench: {message}", file=sys.stderr, flush=True))
    except (BenchError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(markdown(result))
    print(f"bench: {time.perf_counter() - start:.0f} s; results in {args.out}/ (results.md, cases.csv, "
          "modalities.csv, models.csv, *.png)", file=sys.stderr)
    failed = sum(m["failed"] for m in result.models) + sum(bool(m["error"]) for m in result.models)
    return 1 if failed else 0


def precision_sweep(args: argparse.Namespace) -> int:
    """`--precision-sweep`: the precision benchmark on the models, size and data of this command line."""
    from ..benchmark import precision

    parser = argparse.ArgumentParser()
    precision.add_arguments(parser)
    sweep = parser.parse_args([])
    sweep.models, sweep.data, sweep.out = args.models, args.data, args.out / "precision"
    if args.size is not None:
        sweep.size = args.size
    try:
        return precision.run(sweep)
    except (OSError, ValueError) as error:  # e.g. --data without cases, or a case that is not a task .npz
        print(f"error: {error}", file=sys.stderr)
        return 1
