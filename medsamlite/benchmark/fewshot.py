"""The k-shot protocol as a suite: DSC/NSD against k per method, trainable parameters and wall time.

    medsamlite bench fewshot --data CASES --model litemedsam --shots 1 5 10 --draws 3
    medsamlite bench fewshot                       # a synthetic set (medsamlite.data.synthetic) written to OUT/data

Per router group (modality group) of the data: a fixed held-out split, k cases drawn per draw, each method
adapting a fresh copy of the model (`training.fewshot`). Writes fewshot.csv (every run),
fewshot_summary.csv, fewshot.md (mean over groups and draws) and fewshot.png (DSC against k per method).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .plots import save_figure
from .report import machine_header, markdown_table, write_csv, write_markdown


def plot(summary: list[dict], path: Path, title: str) -> Path:
    """Mean DSC against k, one line per method; the zero-shot model as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(s["method"] for s in summary):
        points = sorted((s["k"], s["dsc"], s["dsc_std"]) for s in summary if s["method"] == method)
        if method == "none":
            ax.axhline(points[0][1], color="grey", ls="--", label="zero-shot")
            continue
        ks, dsc, std = zip(*points)
        ax.errorbar(ks, dsc, yerr=std, marker="o", capsize=3, label=method)
    ax.set_xlabel("shots per group (k)")
    ax.set_ylabel("mean DSC on the held-out cases")
    ax.set_xscale("log")
    ax.set_xticks(sorted({s["k"] for s in summary if s["k"] > 0}), labels=None)
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=8)
    return save_figure(fig, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..training.config import FewShotConfig  # torch-free: building the `bench` parser stays light

    d = FewShotConfig()
    parser.add_argument("--data", type=Path, help="task cases (default: a synthetic set written to OUT/data)")
    parser.add_argument("--synthetic-cases", type=int, default=13, help="synthetic cases per modality")
    parser.add_argument("--synthetic-size", type=float, default=0.25, help="synthetic image scale")
    parser.add_argument("--modalities", nargs="*", default=["US", "X-Ray"], help="synthetic modalities")
    parser.add_argument("--model", default="litemedsam", help="registered model (pretrained weights where packaged)")
    parser.add_argument("--input-size", type=int, help="override the model's input size")
    parser.add_argument("--groups", help='router groups, e.g. "3D=CT,MR,PET;US" (default: DAFT\'s)')
    parser.add_argument("--shots", type=int, nargs="+", default=list(d.shots))
    parser.add_argument("--draws", type=int, default=d.draws)
    parser.add_argument("--methods", nargs="+", default=list(d.methods))
    parser.add_argument("--steps", type=int, default=d.steps, help="optimiser steps per adaptation")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--test-cases", type=int, default=d.test_cases, help="held-out cases per group")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--out", type=Path, default=Path("fewshot-results"))


def run(args: argparse.Namespace) -> int:
    """The protocol of `args` (see `add_arguments`); writes the reports and prints the table."""
    import torch

    from ..constants import find_cases
    from ..data.synthetic import write_dataset
    from ..factory import create_model, has_pretrained
    from ..registry import get_model_config
    from ..runtime.precision import cpu_summary
    from ..runtime.router import Router, parse_groups
    from ..training.fewshot import FewShotConfig, run_fewshot, summarise

    if args.data is None:
        files = write_dataset(args.out / "data", modalities=args.modalities, per_modality=args.synthetic_cases,
                              size=args.synthetic_size, seed=args.seed)
        source = (f"synthetic set ({args.synthetic_cases} cases of {', '.join(args.modalities)} at size "
                  f"{args.synthetic_size}; not the tutorial's benchmark)")
    else:
        files = find_cases(args.data).files
        if not files:
            raise SystemExit(f"{args.data}: no .npz cases (looked in {args.data} and {args.data / 'imgs'})")
        source = f"{len(files)} cases of {args.data}"
    pretrained = has_pretrained(get_model_config(args.model))
    torch.manual_seed(args.seed)
    overrides = {"input_size": args.input_size} if args.input_size else {}
    base = create_model(args.model, pretrained=pretrained, **overrides)
    config = FewShotConfig(shots=tuple(args.shots), draws=args.draws, methods=tuple(args.methods), steps=args.steps,
                           batch_size=args.batch_size, test_cases=args.test_cases, seed=args.seed)
    router = Router(parse_groups(args.groups)) if args.groups else Router()
    rows = run_fewshot(base, files, config, router, log=lambda row: print(row, flush=True))
    summary = summarise(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "fewshot.csv")
    write_csv(summary, args.out / "fewshot_summary.csv")
    groups = sorted({r["group"] for r in rows})
    header = machine_header() + [
        f"model {args.model} ({'pretrained' if pretrained else 'seeded random weights'}); {source}",
        f"groups {', '.join(groups)}; {config.test_cases} held-out cases per group; k in {list(config.shots)}, "
        f"{config.draws} draws; {config.steps} AdamW steps of batch {config.batch_size} per adaptation",
        "dsc/nsd: mean over groups and draws (dsc_std: their spread); seconds: wall time of one adaptation"]
    columns = ["method", "k", "runs", "dsc", "dsc_std", "nsd", "trainable", "seconds"]
    table = markdown_table([{**s, **{c: f"{s[c]:.3f}" for c in ("dsc", "dsc_std", "nsd")},
                             "trainable": f"{s['trainable']:,}", "seconds": f"{s['seconds']:.1f}"}
                            for s in summary], columns)
    write_markdown(args.out / "fewshot.md", "Few-shot adaptation: DSC against k per method", header, table)
    plot(summary, args.out / "fewshot.png", f"{args.model}; {cpu_summary()}")
    print((args.out / "fewshot.md").read_text())
    return 0
