"""`medsamlite bench data` end to end at a tiny size: every measure reported, CSV + markdown + PNG."""
from __future__ import annotations

import argparse
import csv

from medsamlite.cli import bench as cli


def test_data_suite_reports_every_measure(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["data", "--ct-cases", "1", "--depth", "4", "--cases-2d", "1", "--items", "3",
                              "--npz-items", "2", "--batch-size", "1", "--workers", "0", "--index-sizes", "300", "3000",
                              "--out", str(tmp_path / "out")])
    assert cli.run(args) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "data.csv").open()))
    measures = {(r["measure"], r["path"], r["workers"], r["entries"]) for r in rows}
    assert {("items_per_s", p, w, "") for p in ("npz", "prepared") for w in ("0",)} <= measures
    assert {("index_open_s", "prepared", "", n) for n in ("300", "3000")} <= measures
    assert {("prepare_cases_per_s", "prepare", w, "") for w in ("1", "2")} <= measures
    assert all(float(r["value"]) > 0 for r in rows)
    assert "CPU: " in (tmp_path / "out" / "data.md").read_text()
    assert (tmp_path / "out" / "data.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "items_per_s" in capsys.readouterr().out
