"""`medsamlite data prepare SRC DST`: training cases to the memory-mapped layout `PreparedDataset` reads (no torch)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True)
    p = sub.add_parser("prepare", help="convert task .npz / NIfTI / PNG cases once, read them memory-mapped after",
                       description="Convert training cases (task .npz with imgs+gts or imgs/ + gts/; NIfTI or PNG/JPG "
                                   "under images/ + labels/) into uncompressed arrays plus one index of every "
                                   "(case, slice, label). Resumable: prepared cases are skipped.")
    p.add_argument("src", type=Path, help="a folder of cases (or one .npz file)")
    p.add_argument("dst", type=Path, help="the prepared folder (created; an existing one is completed)")
    p.add_argument("--workers", type=int, help="processes (default: every core; 0 or 1: this process)")
    p.add_argument("--modality", help="the modality of every case (default: read from each file name)")
    p.add_argument("--window", help="CT window for NIfTI: a preset (soft_tissue, lung, brain, bone, liver, "
                                    "mediastinum) or LEVEL,WIDTH in HU (default soft_tissue 40,400)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare
    from ..data.sources import parse_window

    try:
        report = prepare(args.src, args.dst, args.workers, args.modality, parse_window(args.window),
                         progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as error:
        print(f"medsamlite data prepare: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.ok else 1
