"""`medsamlite bench data`: training-data throughput, the `.npz` path against the prepared (memory-mapped) path.

    medsamlite bench data                       # 2 CT-like volumes 64x512x512, 6 2D cases; 0, 1, 2 workers
    medsamlite bench data --depth 200 --out data-results

Measures, in one run: `prepare` throughput (cases/s, MB/s) with 1 and 2 processes; items/s of
`NpzSliceDataset` and `PreparedDataset` (K targets, the model's input) through a DataLoader with each
worker count, in batches, over a seeded random order of items (the first batch is not timed); the
median wall and CPU time of one item from a 512x512 CT slice; the time to open a generated index of
10k and 1M entries (and to list its `modalities` for the sampler). Writes data.{csv,md,png}.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .plots import save_figure
from .report import machine_header, markdown_table, write_csv, write_markdown


def write_sources(root: Path, ct_cases: int, depth: int, cases_2d: int, seed: int) -> int:
    """Synthetic task cases: CT-like volumes (depth x 512 x 512) and 2D cases of realistic sizes; returns .npz bytes."""
    from ..data.synthetic import MODALITIES_2D, make_case, write_case

    files = [write_case(make_case("CT", i, seed, size=512 / 192, depth=depth / 24), root) for i in range(ct_cases)]
    files += [write_case(make_case(MODALITIES_2D[i % len(MODALITIES_2D)], i, seed), root) for i in range(cases_2d)]
    return sum(p.stat().st_size for pair in files for p in pair)


def synthetic_index(root: Path, entries: int, seed: int = 0) -> Path:
    """A prepared folder's index of `entries` rows (3 labels per slice; half the slices 2D cases, half 100-slice volumes)."""
    from ..data.prepare import ENTRY_DTYPE, MODALITY_CODES, case_dtype, write_tables

    rng = np.random.default_rng(seed)
    slices = entries // 3
    half = slices // 2
    case_of_slice = np.concatenate([np.arange(half), half + np.arange(slices - half) // 100])
    row = np.concatenate([np.zeros(half, np.int32), np.arange(slices - half) % 100])
    n_cases = int(case_of_slice[-1]) + 1
    case_modality = rng.integers(0, len(MODALITY_CODES) - 1, n_cases).astype(np.int8)
    index = np.zeros(slices * 3, ENTRY_DTYPE)
    index["case"] = np.repeat(case_of_slice, 3)
    index["row"] = index["slice"] = np.repeat(row, 3)
    index["label"] = np.tile([1, 2, 3], slices)
    index["box"] = [10, 10, 200, 200]
    index["area"] = 36100
    index["modality"] = case_modality[index["case"]]
    index["dim"] = np.where(index["case"] < half, 2, 3)
    cases = np.zeros(n_cases, case_dtype(12))
    cases["name"] = [f"case_{i:07d}".encode() for i in range(n_cases)]
    cases["modality"], cases["dim"] = case_modality, np.where(np.arange(n_cases) < half, 2, 3)
    root.mkdir(parents=True, exist_ok=True)
    write_tables(root, index, cases, {}, "synthetic")
    return root


def loader_rate(dataset, indices: list[int], workers: int, batch_size: int) -> float:
    """Items per second through a DataLoader (batches collated in the workers), not counting the first batch."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=workers)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    count = sum(len(batch["case"]) for batch in iterator)
    return count / (time.perf_counter() - start)


def item_median_ms(dataset, indices: list[int]) -> tuple[float, float]:
    """Median wall and CPU milliseconds of one item (CPU time is what a shared, loaded machine still measures)."""
    dataset[indices[0]]
    wall, cpu = [], []
    for i in indices:
        start, start_cpu = time.perf_counter(), time.process_time()
        dataset[i]
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return 1000 * statistics.median(wall), 1000 * statistics.median(cpu)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    items = [r for r in rows if r["measure"] == "items_per_s"]
    left.bar([f"{r['path']}\n{r['workers']} workers" for r in items], [r["value"] for r in items],
             color=["tab:grey" if r["path"] == "npz" else "tab:blue" for r in items])
    left.set_yscale("log"), left.set_ylabel("items / s (log)")
    opens = [r for r in rows if r["measure"] == "index_open_s"]
    right.bar([f"{r['entries']:,} entries" for r in opens], [r["value"] for r in opens])
    right.set_ylabel("seconds to open the index")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="litemedsam", help="registered model whose input the items are built for")
    parser.add_argument("--targets", type=int, default=4, help="targets per image (K)")
    parser.add_argument("--ct-cases", type=int, default=2)
    parser.add_argument("--depth", type=int, default=64, help="slices per CT-like volume (512 x 512 each)")
    parser.add_argument("--cases-2d", type=int, default=6)
    parser.add_argument("--items", type=int, default=60, help="items per prepared-path run")
    parser.add_argument("--batch-size", type=int, default=4, help="DataLoader batch size")
    parser.add_argument("--npz-items", type=int, default=8, help="items per .npz-path run (each decompresses a case)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--index-sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("data-results"))


def run(args: argparse.Namespace) -> int:
    """The measurements of `args` (see `add_arguments`); writes the reports and prints the table."""
    from ..data.datasets import NpzSliceDataset
    from ..data.prepare import prepare
    from ..data.prepared import PreparedDataset
    from ..registry import get_model_config
    from ..runtime.precision import cpu_summary

    config = get_model_config(args.model)
    rows: list[dict] = []

    def add(measure: str, value: float, unit: str, **context) -> None:
        rows.append({"measure": measure, "path": "", "workers": "", "entries": "", **context,
                     "value": round(value, 4), "unit": unit})
        print(rows[-1], flush=True)

    with tempfile.TemporaryDirectory(prefix="medsamlite-bench-data-") as tmp:
        tmp = Path(tmp)
        npz_bytes = write_sources(tmp / "src", args.ct_cases, args.depth, args.cases_2d, args.seed)
        for workers in (1, 2):
            start = time.perf_counter()
            report = prepare(tmp / "src", tmp / f"prepared{workers}", workers=workers, progress=False)
            seconds = time.perf_counter() - start
            add("prepare_cases_per_s", sum(report.counts.values()) / seconds, "cases/s", path="prepare", workers=workers)
            add("prepare_mb_per_s", report.bytes_written / 2 ** 20 / seconds, "MB/s written", path="prepare",
                workers=workers)
        npz = NpzSliceDataset(tmp / "src", config, slices="all", targets_per_image=args.targets, seed=args.seed)
        prepared = PreparedDataset(tmp / "prepared1", config, targets_per_image=args.targets, seed=args.seed)
        order = np.random.default_rng(args.seed).permutation(len(prepared)).tolist()
        for name, dataset, n in (("npz", npz, args.npz_items), ("prepared", prepared, args.items)):
            for workers in args.workers:
                rate = loader_rate(dataset, order[: n + args.batch_size], workers, args.batch_size)
                add("items_per_s", rate, "items/s", path=name, workers=workers)
        modalities = prepared.modalities
        ct = [i for i in order if modalities[i] == "CT"][: args.items]  # only the volumes are CT here
        for name, dataset, n in (("prepared", prepared, args.items), ("npz", npz, args.npz_items)):
            wall, cpu = item_median_ms(dataset, ct[:n])
            add("item_ms_512", wall, "ms wall (median, 512x512 CT slice)", path=name, workers=0)
            add("item_cpu_ms_512", cpu, "ms CPU (median, 512x512 CT slice)", path=name, workers=0)
        for entries in args.index_sizes:
            root = synthetic_index(tmp / f"index{entries}", entries, args.seed)
            start = time.perf_counter()
            dataset = PreparedDataset(root)
            opened = time.perf_counter() - start
            modalities = dataset.modalities
            listed = time.perf_counter() - start
            size = len(modalities) and entries // 3 * 3
            add("index_open_s", opened, "s", path="prepared", entries=size)
            add("index_open_and_modalities_s", listed, "s", path="prepared", entries=size)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "data.csv")
    header = machine_header() + [
        f"{args.ct_cases} CT-like volumes {args.depth}x512x512 and {args.cases_2d} 2D cases (synthetic, "
        f"{npz_bytes / 2 ** 20:.1f} MB of .npz); items for {args.model} (input {config.input_size}), "
        f"K = {args.targets} targets; {args.items} prepared / {args.npz_items} .npz items per loader run in "
        f"batches of {args.batch_size} (the first batch, with the workers' start, not timed)"]
    table = markdown_table(rows, ["measure", "path", "workers", "entries", "value", "unit"])
    write_markdown(args.out / "data.md", "Training data: .npz vs prepared", header, table)
    plot(rows, args.out / "data.png", cpu_summary())
    print((args.out / "data.md").read_text())
    return 0
