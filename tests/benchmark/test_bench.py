"""`medsamlite bench` end to end on tiny synthetic cases: worker processes, scores, reports, plots, errors."""
from __future__ import annotations

import argparse
import csv
import json
import mmap
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from medsamlite.cli import bench as cli
from medsamlite.benchmark.compare import BenchConfig, run_bench
from medsamlite.benchmark.worker import peak_rss_mb, reset_peak_rss
from medsamlite.data.synthetic import write_dataset
from medsamlite.runtime.metrics import evaluate_case

PNG = b"\x89PNG\r\n\x1a\n"


def parse(argv: list[str]) -> argparse.Namespace:
    """`medsamlite bench ARGV` as the command line parses it (no suite name: the default suite)."""
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(cli.prepare_argv(argv))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    write_dataset(root / "data", modalities=("PET", "Endoscopy"), size=0.2, depth=0.1)  # 4 slices + 1 image
    config = BenchConfig(out=root / "out", models=["litemedsam", "repvit_m0_6_medsam"], data=root / "data", threads=1)
    return config, run_bench(config)


def test_reports_are_written(bench):
    config, result = bench
    out = config.out
    for name in ("cases.csv", "modalities.csv", "models.csv", "results.md", "context.json"):
        assert (out / name).stat().st_size > 0
    for name in ("runtime_vs_dsc.png", "modality_seconds.png", "modality_dsc.png"):
        assert (out / name).read_bytes()[:8] == PNG
    rows = list(csv.DictReader(open(out / "cases.csv")))
    assert {(r["model"], r["case"]) for r in rows} == {(m, c) for m in ("litemedsam", "repvit_m0_6_medsam")
                                                        for c in ("2DBox_Endoscopy_0000.npz", "3DBox_PET_0000.npz")}
    assert all(r["status"] == "ok" and float(r["seconds"]) > 0 and float(r["peak_rss_mb"]) > 100 for r in rows)
    assert {r["modality"] for r in rows} == {"PET", "Endoscopy"}


def test_scores_are_the_metrics_of_the_written_segs(bench):
    config, result = bench
    for row in result.cases:
        with np.load(config.data / "gts" / row["case"]) as g, np.load(row["segs"]) as s:
            score = evaluate_case(s["segs"], g["gts"], g["spacing"] if g["gts"].ndim == 3 else None)
        assert row["dsc"] == score.mean_dsc and row["nsd"] == score.mean_nsd


def test_trained_weights_are_stated_and_random_dsc_is_not_shown(bench):
    config, result = bench
    weights = {m["model"]: m["weights"] for m in result.models}
    assert weights == {"litemedsam": "trained", "repvit_m0_6_medsam": "random"}
    trained = [r for r in result.cases if r["model"] == "litemedsam"]
    assert max(r["dsc"] for r in trained) > 0.5  # the packaged LiteMedSAM weights segment a box-prompted polyp
    text = (config.out / "results.md").read_text()
    models_table = text.split("\n\n")[2].splitlines()  # after the title and the context lines
    row = {line.split("|")[1].strip(): line for line in models_table[2:]}
    assert "| — | — |" in row["repvit_m0_6_medsam"] and "| — | — |" not in row["litemedsam"]
    assert "random initialisation, benchmarked for speed and memory only" in text and result.context["cpu"] in text


def test_peak_rss_is_per_case():
    method = reset_peak_rss()
    before = peak_rss_mb()
    block = mmap.mmap(-1, 64 * 2 ** 20)  # 64 MiB of fresh pages (a malloc could reuse resident free memory)
    block.write(b"\1" * len(block))
    grown = peak_rss_mb()
    block.close()
    assert grown - before > 50
    if method == "vmhwm-per-case":  # Linux: the peak resets to the current RSS
        reset_peak_rss()
        assert peak_rss_mb() < grown - 50


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.run(parse(["--out", str(tmp_path), "--checkpoints", "litemedsam"])) == 1
    assert "MODEL=PATH" in capsys.readouterr().err
    assert cli.run(parse(["--out", str(tmp_path), "--models", "no_such_model"])) == 1
    assert "unknown model" in capsys.readouterr().err
    out = ["--out", str(tmp_path / "o"), "--models", "litemedsam"]
    assert cli.run(parse([*out, "--data", str(tmp_path / "data")])) == 1
    assert "no 'imgs/' folder" in capsys.readouterr().err
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    assert cli.run(parse([*out, "--data", str(tmp_path / "data")])) == 1
    assert "no .npz cases" in capsys.readouterr().err


def test_partial_ground_truth_is_timed_not_scored(tmp_path):
    from medsamlite.benchmark.compare import BenchConfig, prepare_data, score_case

    write_dataset(tmp_path / "data", modalities=("US", "Endoscopy"), size=0.1)
    (tmp_path / "data" / "gts" / "2DBox_US_0000.npz").unlink()
    root, cases = prepare_data(BenchConfig(data=tmp_path / "data", out=tmp_path / "o"))
    assert [c.name for c in cases] == ["2DBox_Endoscopy_0000.npz", "2DBox_US_0000.npz"]
    segs = tmp_path / "segs.npz"
    for case in cases:
        with np.load(root / "gts" / cases[0].name) as g:
            np.savez(segs, segs=g["gts"])
        row = score_case({"case": case.name, "segs": str(segs)}, root / "gts")
        assert (row["dsc"] == 1.0) if case == cases[0] else (row["note"] == "no ground truth" and "dsc" not in row)


def test_small_setting_from_environment(monkeypatch):
    monkeypatch.setenv("MEDSAMLITE_BENCH_SMALL", "1")
    args = parse([])
    assert args.small and args.out == Path("bench-results")
    assert BenchConfig(small=True).model_names() == ["litemedsam"] and BenchConfig(small=True).main_job


def test_main_job_through_the_command_line(tmp_path):
    """`medsamlite bench --small`: litemedsam on every installed backend (scored), every encoder's speed."""
    import importlib.util

    from medsamlite.registry import list_models

    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "medsamlite", "bench", "--small", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    models = list(csv.DictReader(open(out / "models.csv")))
    from medsamlite.runtime.precision import cpu_supports_bf16

    # needs native bf16 for an "auto" row: elsewhere OpenVINO's default is f32 and the f32 row stands for it, once
    openvino = importlib.util.find_spec("openvino") is not None
    expected = [("torch", "f32")] + ([("openvino", "f32")] if openvino else []) + (
        [("openvino", "auto")] if openvino and cpu_supports_bf16() else [])
    assert [(r["backend"], r["run"].rsplit("_", 1)[1]) for r in models] == expected
    assert all(r["model"] == "litemedsam" and r["weights"] == "trained" and float(r["dsc"]) > 0.3 for r in models)
    table = done.stdout.split("Encoder speed")[0]
    assert all(f"| litemedsam_{b}_{p} | trained |" in table for b, p in expected)
    if importlib.util.find_spec("openvino"):
        speed = list(csv.DictReader(open(out / "encoder_speed.csv")))
        assert [r["model"] for r in speed] == list_models() and all(float(r["encode_ms"]) > 0 for r in speed)
        assert "dsc" not in speed[0]
        assert all(f"| {m} |" in done.stdout.split("Encoder speed")[1] for m in list_models())
        assert (out / "encoder_speed.png").read_bytes()[:8] == PNG
        assert "Speed-up over torch f32" in done.stdout
        if not cpu_supports_bf16():
            assert "openvino auto: resolves to f32" in done.stdout + done.stderr
    # the OpenVINO runs open the folder the job compiled, torch-free as an exported model runs
    for backend, precision in expected:
        events = (out / "runs" / f"litemedsam_{backend}_{precision}" / "events.jsonl").read_text().splitlines()
        loaded = next(e for e in map(json.loads, events) if e["event"] == "model")
        assert loaded["torch_imported"] is (backend == "torch")


def test_cli_import_is_light():
    code = ("import sys, medsamlite.cli.bench; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'scipy', 'monai', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_precision_sweep_reports_every_precision_against_f32(tmp_path, monkeypatch, capsys):
    from medsamlite.runtime.precision import cpu_supports_bf16

    monkeypatch.setenv("MEDSAMLITE_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "mine"
    write_dataset(data, modalities=("Endoscopy",), size=0.1)
    assert cli.run(parse(["precision", "--models", "repvit_m0_6_medsam", "--size", "0.1", "--data",
                          str(data / "imgs"), "--out", str(tmp_path / "out" / "precision")])) == 0
    out = tmp_path / "out" / "precision"
    rows = list(csv.DictReader((out / "precision.csv").open()))
    expected = ["f32"] + (["bf16"] if cpu_supports_bf16() else []) + ["int8"] + (["torch_bf16"] if cpu_supports_bf16() else [])
    assert [r["precision"] for r in rows] == expected
    f32 = rows[0]
    assert f32["runs_at"] == "f32" and float(f32["dsc_mean"]) == float(f32["dsc_worst"]) == 1.0
    int8 = next(r for r in rows if r["precision"] == "int8")
    assert 0 < float(int8["int8_error"]) <= 0.5 and f32["int8_error"] == ""
    for row in rows:
        assert float(row["encode_ms"]) > 0 and float(row["case_s"]) > 0
        assert 0.0 <= float(row["dsc_worst"]) <= float(row["dsc_mean"]) <= 1.0
    markdown = (out / "precision.md").read_text()
    assert "CPU: " in markdown and "8 cases" in markdown  # 7 synthetic + the one from --data
    assert (out / "precision.png").read_bytes().startswith(PNG)
    assert "precision" in capsys.readouterr().out



def test_case_shapes_are_the_task_shapes():
    """Each synthetic case has its shape and its boxes, inside the image (3D: within the volume's slices)."""
    from medsamlite.benchmark.shapes import LARGE, SHAPES, synth_case

    for shape in SHAPES + LARGE[:1]:
        case = synth_case(shape)
        assert case["imgs"].shape == shape.shape and case["imgs"].dtype == np.uint8
        assert case["boxes"].shape == (shape.boxes, 6 if shape.kind == "3D" else 4)
        x0, y0, x1, y1 = (case["boxes"][:, i] for i in ((0, 1, 3, 4) if shape.kind == "3D" else (0, 1, 2, 3)))
        height, width = shape.shape[1:] if shape.kind == "3D" else shape.shape[:2]
        assert (0 <= x0).all() and (x0 < x1).all() and (x1 < width).all() and (y0 < y1).all() and (y1 < height).all()
        if shape.kind == "3D":
            assert (case["boxes"][:, 5] - case["boxes"][:, 2] + 1 == shape.z_span).all()
            assert case["boxes"][:, 5].max() < shape.shape[0]


def test_bench_shapes_through_the_command_line(tmp_path):
    """`medsamlite bench shapes`: one fresh `predict` process per case, its phases and decode time per box."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "medsamlite", "bench", "shapes", "--pretrained", "--backend",
                           "torch", "--only", "2DBox_X-Ray_synth", "--warmup", "0", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    [row] = list(csv.DictReader(open(out / "case_shapes.csv")))
    assert row["case"] == "2DBox_X-Ray_synth" and row["decoder"] == "auto"
    phases = sum(float(row[f"{p}_s"]) for p in ("read", "preprocess", "encode", "decode", "postprocess", "write"))
    assert 0 < phases < float(row["wall_s"]) and float(row["peak_rss_mb"]) > 0
    assert float(row["decode_ms_per_box"]) == pytest.approx(1000 * float(row["decode_s"]) / 34, rel=1e-3)
    markdown = (out / "case_shapes.md").read_text()
    assert "CPU: " in markdown and "2D 320x640, 34 boxes" in markdown


def test_runs_open_the_compiled_folder_unless_given_their_own_weights(tmp_path, monkeypatch):
    """A main-job OpenVINO run opens the folder fill_cache compiled (packaged weights); --checkpoints builds its own."""
    from medsamlite.benchmark import compare

    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0))
    compiled = compare.Compiled(1.0, True, True, {"f32": str(tmp_path / "entry")})
    for checkpoints, expected in (({}, str(tmp_path / "entry")), ({"litemedsam": "own.pt"}, None)):
        config = BenchConfig(out=tmp_path / str(len(checkpoints)), checkpoints=checkpoints)
        compare.run_model(config, "litemedsam", [], "openvino", "f32", compiled)
        spec = json.loads((config.out / "runs" / "litemedsam_openvino_f32" / "spec.json").read_text())
        assert spec["folder"] == expected and spec["trained"] == (True if expected else None)
        assert spec["checkpoint"] == checkpoints.get("litemedsam")


@pytest.mark.parametrize("default", ["f32", "bf16"])
def test_the_main_job_runs_openvino_auto_only_where_it_differs_from_f32(default, monkeypatch):
    """Both CPU kinds, whichever this one is: OpenVINO's default is read, not this CPU's flags."""
    import importlib.util

    from medsamlite.runtime import openvino

    if importlib.util.find_spec("openvino") is None:
        pytest.skip("the openvino extra is not installed")
    monkeypatch.setattr(openvino, "default_precision", lambda: default)
    runs, notes = BenchConfig(small=True).runs()
    openvino_runs = [precision for _, backend, precision in runs if backend == "openvino"]
    assert openvino_runs == (["f32"] if default == "f32" else ["f32", "auto"])
    assert any("openvino auto: resolves to f32" in n for n in notes) == (default == "f32")
