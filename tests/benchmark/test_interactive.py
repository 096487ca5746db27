"""`medsamlite bench interactive`: the challenge's click simulation, its AUC, and the suite end to end on tiny data."""
from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest

from medsamlite.benchmark.interactive import MODELS, auc, next_click, summarise
from medsamlite.cli import bench as cli


def test_clicks_go_to_the_centre_of_the_largest_error_region_with_its_sign():
    gts = np.zeros((40, 60), np.uint8)
    gts[5:25, 5:45] = 1
    segs = gts.copy()
    segs[5:25, 30:45] = 0  # missed: 20 x 15, the largest error
    segs[30:35, 50:55] = 1  # spurious: 5 x 5
    (y, x), positive = next_click(segs, gts, 1)
    assert positive and 12 <= y <= 17 and 35 <= x <= 39  # the middle of the missed region
    segs[5:25, 30:45] = 1
    (y, x), positive = next_click(segs, gts, 1)
    assert not positive and (y, x) == (32, 52)
    assert next_click(gts, gts, 1) is None


def test_3d_errors_are_26_connected_and_the_image_border_is_a_boundary():
    gts = np.zeros((6, 20, 20), np.uint8)
    segs = gts.copy()
    for z in range(4):  # a diagonal chain of 4 voxels: one region with 26-connectivity, four with 6
        segs[z, z, z] = 2
    segs[0, 15, 10:13] = 2  # a face-connected line of 3
    index, positive = next_click(segs, gts, 2)
    assert not positive and index[0] == index[1] == index[2]
    segs[3:6, 10:20, 0:5] = 2  # 3 x 10 x 5 voxels touching three borders
    index, _ = next_click(segs, gts, 2)
    assert index[0] == 4 and 1 <= index[2] <= 3 and 12 <= index[1] <= 17  # the border counts as outside


def test_auc_is_the_trapezoid_over_the_click_rounds_only():
    dscs = [0.1, 0.5, 0.6, 0.7, 0.8, 0.9]  # the box's 0.1 is not counted
    assert auc(dscs) == pytest.approx((0.5 + 0.9) / 2 + 0.6 + 0.7 + 0.8)
    rows = [{"model": "m", "case": c, "modality": "US", "click": k, "dsc": d, "nsd": d, "seconds": 1.0}
            for c in ("a", "b") for k, d in enumerate(dscs)]
    (summary,) = [s for s in summarise(rows, 5) if s["modality"] == "all"]
    assert summary["dsc_0"] == 0.1 and summary["dsc_final"] == 0.9 and summary["dsc_auc"] == pytest.approx(auc(dscs))


def test_the_suite_writes_its_csv_table_and_plot(tmp_path):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(cli.prepare_argv(["interactive", "--modalities", "US", "--synthetic-cases", "1",
                                               "--size", "0.15", "--depth", "0.17", "--clicks", "2",
                                               "--out", str(tmp_path)]))
    assert cli.run(args) == 0
    with (tmp_path / "interactive.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["model", "case", "modality", "click", "dsc", "nsd", "seconds"]
    assert [(r["model"], r["modality"], int(r["click"])) for r in rows] == [(m, "US", k) for m in MODELS
                                                                            for k in range(3)]
    assert all(0 <= float(r["dsc"]) <= 1 and float(r["seconds"]) >= 0 for r in rows)
    assert (tmp_path / "interactive.png").stat().st_size > 0
    assert "dsc_auc" in (tmp_path / "interactive.md").read_text()


def test_a_saved_model_folder_runs_beside_a_registered_model(tmp_path):
    """`--models` takes a finetune's model/ folder: scored under the path it was given, its weights 'saved'."""
    from medsamlite.checkpoints import save_model
    from medsamlite.factory import create_model

    folder = tmp_path / "finetuned"
    save_model(create_model("litemedsam"), folder)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(cli.prepare_argv(["interactive", "--models", str(folder), "--modalities", "US",
                                               "--synthetic-cases", "1", "--size", "0.15", "--clicks", "1",
                                               "--out", str(tmp_path / "out")]))
    assert cli.run(args) == 0
    with (tmp_path / "out" / "interactive.csv").open() as f:
        assert {r["model"] for r in csv.DictReader(f)} == {str(folder)}
    assert f"{folder} (saved weights)" in (tmp_path / "out" / "interactive.md").read_text()
