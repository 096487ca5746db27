"""Shared output of the benchmarks: CSV, a markdown table with the machine in its header, a bar chart."""
from __future__ import annotations

import csv
import io
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

from ..runtime.files import atomic_file


def machine_header() -> list[str]:
    """Lines naming the CPU (model and precision-relevant flags), cores, load and software, for every figure."""
    from ..runtime.precision import cpu_summary

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return [f"CPU: {cpu_summary()}; {os.cpu_count()} logical cores; load average before the run: {load}",
            f"Python {platform.python_version()} on {platform.system()} {platform.release()}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"]


def write_csv(rows: Sequence[dict[str, Any]], path: Path, fields: Sequence[str] | None = None) -> Path:
    """`rows` as CSV at `path` (atomically): the columns `fields` (others ignored), by default every key in order."""
    fields = list(fields or dict.fromkeys(k for row in rows for k in row))
    with atomic_file(path) as binary, io.TextIOWrapper(binary, encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _cell(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown(path: Path, title: str, header: Sequence[str], table: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {title}\n\n" + "".join(f"- {line}\n" for line in header) + "\n" + table + "\n")
    return path


def stacked_bars(path: Path, labels: Sequence[str], parts: dict[str, Sequence[float]], title: str,
                 ylabel: str = "seconds") -> Path | None:
    """A stacked bar chart (one bar per label, one colour per part); None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(labels)), 4.5))
    bottom = [0.0] * len(labels)
    for name, values in parts.items():
        ax.bar(labels, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
