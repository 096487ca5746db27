"""`medsamlite evaluate --segs S --gts G [--out DIR]`: score existing segmentations as the task does (torch-free)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--segs", type=Path, required=True,
                        help="folder of <case>.npz with key 'segs', or of NIfTI label maps <case>.nii[.gz]")
    parser.add_argument("--gts", type=Path, required=True,
                        help="folder of <case>.npz with key 'gts' (3D: 'spacing'), or of NIfTI label maps of the "
                             "same names (spacing from the header)")
    parser.add_argument("--out", type=Path, help="folder for metrics.csv, labels.csv and summary.md (default: --segs)")


def run(args: argparse.Namespace) -> int:
    from ..benchmark.report import markdown_table, write_csv, write_markdown
    from ..runtime.scoring import score_folder

    try:
        scores = score_folder(args.segs, args.gts)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for line in scores.skipped:
        print(f"skipped {line}", file=sys.stderr)
    for line in scores.failed:
        print(f"error: {line}", file=sys.stderr)
    out = args.out or args.segs
    summary = scores.by_modality()
    if scores.cases:
        write_csv(scores.cases, out / "metrics.csv")
        write_csv(scores.labels, out / "labels.csv")
        header = [f"segmentations {args.segs}; ground truth {args.gts}",
                  "DSC and NSD (tolerance 2 mm; NSD 0 where the case's mean DSC <= 0.2)",
                  "NSD spacing: .npz, the task's convention ('spacing' as stored, applied unchanged to the (z, y, x) "
                  "array); NIfTI, the ground truth header's pixdim along i, j, k of the array as stored",
                  f"{len(scores.cases)} scored, {len(scores.skipped)} skipped, {len(scores.failed)} failed"]
        table = markdown_table([{**r, "dsc": f"{r['dsc']:.4f}", "nsd": f"{r['nsd']:.4f}"} for r in summary],
                               ["modality", "cases", "dsc", "nsd"])
        print(write_markdown(out / "summary.md", "Evaluation", header, table).read_text())
    else:
        print("error: no case could be scored", file=sys.stderr)
    return 1 if scores.failed or not scores.cases else 0
