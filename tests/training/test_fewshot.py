"""The k-shot protocol on tiny settings: 1 shot, 2 methods, 1 draw; the report's rows, summary and files."""
from __future__ import annotations

import argparse

import pytest
import torch

import medsamlite
from medsamlite.data.synthetic import write_dataset
from medsamlite.training.fewshot import FewShotConfig, draw_shots, run_fewshot, split_group, summarise

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_draws_are_seeded_and_never_touch_the_test_split(tmp_path) -> None:
    files = [tmp_path / f"2DBox_US_{i:04d}.npz" for i in range(8)]
    pool, test = split_group(files, 2, seed=0, group="US")
    assert len(test) == 2 and not set(pool) & set(test) and split_group(files, 2, 0, "US") == (pool, test)
    shots = [draw_shots(pool, 3, d, 0, "US") for d in range(2)]
    assert shots[0] == draw_shots(pool, 3, 0, 0, "US") and shots[0] != shots[1]
    assert all(set(s) <= set(pool) and len(s) == 3 for s in shots)


def test_protocol_on_tiny_settings_reports_every_run(tmp_path) -> None:
    files = write_dataset(tmp_path / "data", modalities=("US", "X-Ray"), per_modality=2, size=0.1)
    torch.manual_seed(0)
    base = medsamlite.create_model("efficientvit_sam_l0", input_size=64)
    config = FewShotConfig(shots=(1,), draws=1, methods=("probe", "spatial"), settings={"spatial": {"hidden": 4}},
                           steps=1, batch_size=1, test_cases=1)
    rows = run_fewshot(base, files, config)
    assert {(r["group"], r["k"], r["method"]) for r in rows} == {
        (g, k, m) for g in ("US", "XRay") for k, m in ((0, "none"), (1, "probe"), (1, "spatial"))}
    for r in rows:
        assert 0.0 <= r["dsc"] <= 1.0 and 0.0 <= r["nsd"] <= 1.0 and r["test_cases"] == 1
        assert (r["trainable"] > 0) == (r["method"] != "none")
        assert (r["train_cases"] != "") == (r["k"] > 0) and ";" not in r["train_cases"]
    assert next(r for r in rows if r["method"] == "probe")["trainable"] == base.config.embed_dim // 8
    summary = summarise(rows)
    assert [(s["method"], s["k"], s["runs"]) for s in summary] == [("none", 0, 2), ("probe", 1, 2), ("spatial", 1, 2)]


def test_fewshot_suite_writes_csv_markdown_and_plot(tmp_path) -> None:
    from medsamlite.benchmark import fewshot

    write_dataset(tmp_path / "data", modalities=("US",), per_modality=2, size=0.1)
    parser = argparse.ArgumentParser()
    fewshot.add_arguments(parser)
    args = parser.parse_args(["--data", str(tmp_path / "data"), "--model", "efficientvit_sam_l0", "--input-size", "64",
                              "--shots", "1", "--draws", "1", "--methods", "probe", "decoder", "--steps", "1",
                              "--batch-size", "1", "--test-cases", "1", "--out", str(tmp_path / "out")])
    assert fewshot.run(args) == 0
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"fewshot.csv", "fewshot_summary.csv", "fewshot.md", "fewshot.png"} <= names
    table = (tmp_path / "out" / "fewshot.md").read_text()
    assert "| decoder | 1 |" in table and "CPU:" in table
