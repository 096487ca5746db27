"""Red-team cases (issue 16): what an attacker or a careless user tried, each reported in one line or handled.

Every test here failed on the code the issue was filed against.
"""
from __future__ import annotations

import copy
import gc
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, cache_dir, golden_case_for, golden_state_dict, torch_model  # noqa: F401
from fakes import BoxEngine
from medsamlite.export import compile, export
from medsamlite.export.compile import ONNX_STAGE, onnx_key
from medsamlite.runtime import Predictor
from medsamlite.runtime.compiled import load, read_meta
from medsamlite.runtime.files import IntegrityError, check_recorded
from medsamlite.runtime.npz import CaseError
from medsamlite.runtime.preprocess import preprocess_image


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text.strip(), text
    return text


def cli(*args: object, **kwargs) -> subprocess.CompletedProcess:
    """`python -m medsamlite ARGS` in a fresh process (this worktree's package)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "medsamlite", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, **kwargs)


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def _case(folder: Path, name: str = "2DBox_a.npz", size: int = 48) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    with open(folder / name, "wb") as f:  # a file object: np.savez would append .npz to "x.NPZ"
        np.savez(f, imgs=image, boxes=np.array([[4, 4, size - 8, size - 8]]))
    return folder / name


# no silent NaN ------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1e308, -1e308, 1e300])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_extreme_finite_images_normalise_as_a_sane_copy(scale: float, dtype: type) -> None:
    sane = np.random.default_rng(0).uniform(-1, 1, (90, 60)).astype(dtype)
    scale = float(np.clip(scale, -3e38, 3e38)) if dtype == np.float32 else scale
    extreme = (sane.astype(np.float64) * scale).astype(dtype)
    assert np.isfinite(extreme).all()
    got, shape = preprocess_image(extreme, 256)
    want, want_shape = preprocess_image(sane if scale > 0 else -sane, 256)
    assert shape == want_shape and np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


class NaNEngine(BoxEngine):
    """An engine whose encoder (or decoder) returns NaN, as a corrupted compiled model did."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    def encode(self, images: np.ndarray) -> np.ndarray:
        out = super().encode(images)
        return np.full_like(out, np.nan) if self.where == "encode" else out

    def decode(self, embeddings: np.ndarray, boxes: np.ndarray):
        low, iou = super().decode(embeddings, boxes)
        if self.where == "decode":
            low[:, :, :8] = np.inf
        return low, iou


@pytest.mark.parametrize("where", ["encode", "decode"])
def test_non_finite_embeddings_or_logits_are_a_case_error_not_an_empty_mask(where: str, tmp_path) -> None:
    predictor = Predictor(NaNEngine(where))
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    with pytest.raises(CaseError, match="NaN/inf") as error:
        predictor.predict_2d(image, np.array([[4, 4, 40, 40]]))
    one_line(error)
    np.savez(tmp_path / "2DBox_x.npz", imgs=image, boxes=np.array([[4, 4, 40, 40]]))
    with pytest.raises(CaseError, match="NaN/inf"):
        predictor.predict_file(tmp_path / "2DBox_x.npz", tmp_path / "out" / "2DBox_x.npz")
    assert not (tmp_path / "out" / "2DBox_x.npz").exists()


# Predictor given what numpy cannot read ----------------------------------------------------------------

@pytest.mark.parametrize("tensor", ["requires_grad", "bf16"])
def test_torch_tensors_numpy_cannot_read_are_one_line_errors(tensor: str) -> None:
    image = torch.rand(32, 32, 3, requires_grad=True) if tensor == "requires_grad" else \
        torch.rand(32, 32, 3).to(torch.bfloat16)
    with pytest.raises(CaseError, match="key 'imgs'.*numpy array") as error:
        Predictor(BoxEngine()).predict_2d(image, np.array([[2, 2, 20, 20]]))
    one_line(error)
    boxes = torch.tensor([[2.0, 2, 20, 20]], requires_grad=True)
    with pytest.raises(CaseError, match="key 'boxes'"):
        Predictor(BoxEngine()).predict_2d(np.zeros((32, 32, 3), np.uint8), boxes)


def test_predict_file_to_a_folder_is_a_one_line_error(tmp_path) -> None:
    np.savez(tmp_path / "2DBox_x.npz", imgs=np.zeros((16, 16, 3), np.uint8), boxes=np.array([[1, 1, 9, 9]]))
    (tmp_path / "out").mkdir()
    with pytest.raises(CaseError, match="is a folder") as error:
        Predictor(BoxEngine()).predict_file(tmp_path / "2DBox_x.npz", tmp_path / "out")
    one_line(error)
    assert list((tmp_path / "out").iterdir()) == []


# integrity of compiled folders and cache entries ------------------------------------------------------

CHEAP = "repvit_m0_6_medsam"


def _overwrite_middle(path: Path) -> None:
    """1 MiB (at most half the file) overwritten in the middle, the size unchanged."""
    size = path.stat().st_size
    n = min(1 << 20, size // 2)
    with open(path, "r+b") as f:
        f.seek((size - n) // 2)
        f.write(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes())


DAMAGE = {"overwritten": _overwrite_middle, "truncated": lambda p: os.truncate(p, p.stat().st_size // 2),
          "deleted": lambda p: p.unlink()}


def _images(size: int) -> np.ndarray:
    return np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)


@pytest.mark.parametrize("file, damage", [("encoder.onnx", "overwritten"), ("encoder.onnx", "truncated"),
                                          ("decoder.onnx", "deleted"), ("config.json", "deleted")])
def test_a_damaged_cache_entry_is_rebuilt_with_a_warning(file: str, damage: str, cache_dir: Path) -> None:
    model = torch_model(CHEAP)
    first = compile(model, "onnxruntime", cache_dir=cache_dir)
    path, want = first.path, first.encode(_images(model.config.input_size))
    del first
    gc.collect()
    DAMAGE[damage](path / file)
    with pytest.warns(RuntimeWarning, match=f"{file}.*rebuilding this cache entry"):
        again = compile(model, "onnxruntime", cache_dir=cache_dir)
    assert again.path == path and not list(path.parent.glob(".*.tmp"))
    check_recorded(path, read_meta(path))
    np.testing.assert_array_equal(again.encode(_images(model.config.input_size)), want)


def test_a_damaged_onnx_stage_is_traced_again_with_a_warning(cache_dir: Path, tmp_path: Path) -> None:
    model = torch_model(CHEAP)
    compile(model, "onnxruntime", cache_dir=cache_dir)
    stage = tmp_path / "cache" / ONNX_STAGE
    shutil.copytree(cache_dir / ONNX_STAGE, stage)
    key = onnx_key(model, ["dense"])  # what a dense compile traces
    (stage / key / "decoder.onnx").unlink()  # half-deleted: the 14-frame traceback
    with pytest.warns(RuntimeWarning, match="decoder.onnx.*rebuilding"):
        compiled = compile(model, "onnxruntime", cache_dir=tmp_path / "cache")
    check_recorded(stage / key, read_meta(stage / key))
    assert np.isfinite(compiled.encode(_images(model.config.input_size))).all()


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_exported_folder_is_a_one_line_error_naming_the_file(damage: str, cache_dir: Path,
                                                                       tmp_path: Path) -> None:
    folder = export(torch_model(CHEAP), tmp_path / "exported", backend="onnxruntime", cache_dir=cache_dir)
    DAMAGE[damage](folder / "encoder.onnx")
    with pytest.raises(IntegrityError, match="encoder.onnx") as error:
        load(folder)
    one_line(error)


def test_a_damaged_graph_is_caught_by_the_decoder_that_opens_it(cache_dir: Path, tmp_path: Path) -> None:
    folder = export(torch_model(CHEAP), tmp_path / "exported", backend="onnxruntime", cache_dir=cache_dir)
    _overwrite_middle(folder / "factorised.onnx")
    load(folder, decoder="dense").close()  # a dense engine never reads the factorised graphs, nor hashes them
    with pytest.raises(IntegrityError, match="factorised.onnx") as error:
        load(folder, decoder="factorised")
    one_line(error)


def test_exported_folders_and_cache_entries_follow_the_umask(cache_dir: Path, tmp_path: Path) -> None:
    model = torch_model(CHEAP)
    compile(model, "onnxruntime", cache_dir=cache_dir)
    shutil.copytree(cache_dir / ONNX_STAGE, tmp_path / "cache" / ONNX_STAGE)  # a fresh entry, not a fresh trace
    previous = os.umask(0o027)
    try:
        entry = compile(model, "onnxruntime", cache_dir=tmp_path / "cache").path
        folder = export(model, tmp_path / "exported", backend="onnxruntime", cache_dir=tmp_path / "cache")
    finally:
        os.umask(previous)
    for root in (entry, folder):
        assert stat.S_IMODE(root.stat().st_mode) == 0o750, root
        for file in root.iterdir():
            assert stat.S_IMODE(file.stat().st_mode) == 0o640, file


# the command line ---------------------------------------------------------------------------------

@pytest.fixture()
def exported(cache_dir: Path, tmp_path: Path) -> Path:
    """The cheap model as an ONNX Runtime folder: a predict process that starts fast and never imports torch."""
    return export(torch_model(CHEAP), tmp_path / "exported", backend="onnxruntime", cache_dir=cache_dir)


def test_predict_on_a_corrupted_export_exits_1_with_one_line(exported: Path, tmp_path: Path) -> None:
    _overwrite_middle(exported / "encoder.onnx")  # the case: predict exited 0 with an empty mask
    case = _case(tmp_path / "in", "2DBox_a.npz")
    result = cli("predict", "-i", case, "-o", tmp_path / "out", "--model", exported)
    assert result.returncode == 1
    assert _error_lines(result) == [result.stderr.strip()] and "encoder.onnx" in result.stderr
    assert not (tmp_path / "out" / "2DBox_a.npz").exists()


@pytest.mark.parametrize("problem", ["a file", "under a file", "not creatable"])
def test_predict_output_path_problems_are_one_line_before_the_model_loads(problem: str, tmp_path: Path) -> None:
    case = _case(tmp_path / "in")
    (tmp_path / "file").write_text("x")
    output = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "out",
              "not creatable": Path("/proc/medsamlite-redteam/out")}[problem]
    result = cli("predict", "-i", case, "-o", output, "--model", "no-such-model")  # loading would fail too
    assert result.returncode == 1
    assert _error_lines(result) == [result.stderr.strip()] and str(output) in result.stderr
    assert "no-such-model" not in result.stderr
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("problem", ["non-empty folder", "a file"])
def test_export_output_problems_are_one_line_before_the_model_loads(problem: str, tmp_path: Path) -> None:
    output = tmp_path / "out"
    if problem == "a file":
        output.write_text("x")
    else:
        output.mkdir()
        (output / "keep.txt").write_text("x")
    result = cli("export", "--model", "no-such-model", "--backend", "onnxruntime", "-o", output)
    assert result.returncode == 1
    assert _error_lines(result) == [result.stderr.strip()] and str(output) in result.stderr
    assert "no-such-model" not in result.stderr


def test_orphaned_temp_files_of_a_killed_run_are_removed(exported: Path, tmp_path: Path) -> None:
    case = _case(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    orphan = out / ".2DBox_a.npz.k3j2h1_x.tmp"  # what write_segs leaves when SIGKILL hits it
    orphan.write_bytes(b"partial")
    (out / "notes.txt").write_text("kept")
    (out / ".user.tmp").write_text("kept")  # not a name medsamlite writes
    result = cli("predict", "-i", case, "-o", out, "--model", exported)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not orphan.exists() and (out / "notes.txt").read_text() == "kept"
    assert [p.name for p in out.glob(".*")] == [".user.tmp"]
    with np.load(out / "2DBox_a.npz") as z:
        assert z["segs"].shape == (48, 48)
    for file in out.glob("[!.]*"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~_umask(), file


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_sigint_stops_after_the_current_case_and_marks_run_json(exported: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cases = tmp_path / "in"
    cases.mkdir()
    n = 16
    for i in range(n):  # each case runs the encoder once: the rest of the run outlasts the signal's delivery
        np.savez(cases / f"2DBox_{i:02d}.npz", imgs=rng.integers(0, 255, (40, 40, 3), dtype=np.uint8),
                 boxes=np.array([[4, 4, 30, 30]]))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "medsamlite", "predict", "-i", str(cases), "-o", str(out),
                             "--model", str(exported)], stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        timings = out / "timings.csv"
        if timings.exists() and len(timings.read_text().splitlines()) >= 2:  # one case done
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr[-3000:]
    summary = json.loads((out / "run.json").read_text())
    assert proc.returncode == 130 and summary["interrupted"] is True, stderr
    assert 1 <= summary["done"] < n
    assert len(list(out.glob("2DBox_*.npz"))) == summary["done"] and not list(out.glob(".*"))
    assert len([line for line in stderr.splitlines() if "interrupted" in line]) == 1


def test_skipped_input_entries_are_listed(exported: Path, tmp_path: Path) -> None:
    from medsamlite.constants import find_cases

    folder = tmp_path / "in"
    _case(folder, "2DBox_a.npz")
    _case(folder, "2DBox_UPPER.NPZ")
    (folder / "2DBox_dangling.npz").symlink_to(tmp_path / "gone.npz")
    (folder / "2DBox_folder.npz").mkdir()
    found = find_cases(folder)
    assert [p.name for p in found.files] == ["2DBox_UPPER.NPZ", "2DBox_a.npz"]
    assert sorted(Path(s.split(":")[0]).name for s in found.skipped) == ["2DBox_dangling.npz", "2DBox_folder.npz"]
    result = cli("predict", "-i", folder, "-o", tmp_path / "out", "--model", exported)
    assert result.returncode == 0, result.stderr[-3000:]
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning: skipped")]
    assert len(warned) == 2 and "dangling symlink" in result.stderr and "2DBox_folder.npz" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("2DBox_*")) == ["2DBox_UPPER.NPZ", "2DBox_a.npz"]


# checkpoints never run code ---------------------------------------------------------------------

class Payload:
    """Unpickling this runs `exec`, which writes the marker file: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def _malicious(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    import pickle

    marker, path = tmp_path / "marker", tmp_path / f"evil-{kind}.pth"
    if kind == "in a state_dict":  # a working checkpoint with one poisoned entry
        torch.save({"model": torch_model(CHEAP).state_dict(), "extra": Payload(marker)}, path)
    else:  # a bare pickle, not a torch zip: the legacy loader
        path.write_bytes(pickle.dumps(Payload(marker)))
    return path, marker


@pytest.mark.parametrize("kind", ["in a state_dict", "bare pickle"])
def test_a_malicious_checkpoint_runs_no_code_and_is_refused_in_one_line(kind: str, tmp_path: Path) -> None:
    import medsamlite
    from medsamlite.checkpoints import CheckpointError, load_checkpoint

    path, marker = _malicious(tmp_path, kind)
    for load_it in (lambda: load_checkpoint(medsamlite.create_model(CHEAP), path),
                    lambda: medsamlite.create_model(CHEAP, checkpoint=path)):
        with pytest.raises(CheckpointError, match="trust") as error:
            load_it()
        assert "weights_only=False" not in one_line(error) and len(str(error.value)) < 400
        assert not marker.exists()


@pytest.mark.parametrize("command", ["predict", "export"])
def test_the_cli_refuses_a_malicious_checkpoint_in_one_line(command: str, tmp_path: Path, capsys) -> None:
    from medsamlite.cli import main

    path, marker = _malicious(tmp_path, "in a state_dict")
    args = (["predict", "-i", _case(tmp_path / "in"), "-o", tmp_path / "out"] if command == "predict" else
            ["export", "--backend", "onnxruntime", "-o", tmp_path / "out"])
    assert main([*map(str, args), "--model", CHEAP, "--checkpoint", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert not marker.exists()
    assert err.startswith("error:") and "\n" not in err and "--trust-checkpoint" in err


def test_checkpoint_errors_are_short_and_name_keys_as_the_file_does(tmp_path: Path) -> None:
    import medsamlite
    from medsamlite.checkpoints import CheckpointError, load_checkpoint

    model = medsamlite.create_model(CHEAP)
    sd = {"module." + k: v for k, v in model.state_dict().items() if "mask_decoder" not in k}
    sd.update({f"module.image_encoder.extra.{i}.weight": torch.zeros(1) for i in range(40)})
    sd["module.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.zeros(3, 3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(model, tmp_path / "bad.pth")
    text = str(error.value)
    assert len(text.splitlines()) <= 5 and len(text) < 1200, text
    assert "module.image_encoder.extra.0.weight" in text and "module.prompt_encoder.pe_layer" in text


# frozen stays frozen ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_cases(tmp_path_factory) -> list[Path]:
    from medsamlite.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("cases"), modalities=("CT", "US"), per_modality=2, size=0.12,
                         depth=0.02)


def _small_model() -> torch.nn.Module:
    """EfficientViT-L0 at 64 px: an encoder full of BatchNorm, trained in a second."""
    import medsamlite

    torch.manual_seed(0)
    return medsamlite.create_model("efficientvit_sam_l0", input_size=64)


def _tiny_config(out: Path, **changes):
    from medsamlite.training.finetune import FinetuneConfig

    settings = dict(epochs=1, max_steps=2, batch_size=1, lr=1e-2, device="cpu", progress=False)
    return FinetuneConfig(output_dir=str(out), **{**settings, **changes})


def _buffers(module: torch.nn.Module, prefix: str = "image_encoder.") -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()
            if k.startswith(prefix) and ("running_" in k or "num_batches_tracked" in k)}


@pytest.mark.parametrize("method", ["lora", "arena", "bitfit", "norm", "full"])
def test_no_buffer_of_a_frozen_module_changes_in_training(method: str, tiny_cases, tmp_path: Path) -> None:
    from medsamlite import adapters
    from medsamlite.data.datasets import NpzSliceDataset
    from medsamlite.training.finetune import finetune

    model = _small_model()
    before, weights = _buffers(model), {k: v.clone() for k, v in model.state_dict().items()}
    assert before and any("num_batches_tracked" in k for k in before)
    freeze = ("prompt_encoder",)
    if method == "full":
        freeze = ("prompt_encoder", "image_encoder")  # full fine-tuning of the decoder, encoder frozen
    else:
        adapters.apply(model, method, **({"r": 2} if method in ("lora", "arena") else {}))
    data = NpzSliceDataset(tiny_cases, model.config, augment=False)
    finetune(model, data, None, _tiny_config(tmp_path, freeze=freeze), save=lambda net, d: None)
    after = _buffers(model if method == "full" else adapters.unload(model))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], f"{method}: {len(changed)} frozen buffers changed, e.g. {changed[:3]}"
    trained = adapters.unload(model) if method in ("lora", "arena") else model
    if method in ("lora", "arena"):
        assert any(".lora_B." in k and v.abs().sum() > 0 for k, v in model.state_dict().items())
    else:
        assert any(not torch.equal(v, weights[k]) for k, v in trained.state_dict().items()
                   if k in weights and v.is_floating_point()), "nothing trained"


def test_daft_keeps_the_base_pristine_and_the_fallback_reproduces_the_pretrained_model(tiny_cases,
                                                                                       tmp_path: Path) -> None:
    from medsamlite import adapters
    from medsamlite.runtime.npz import read_case
    from medsamlite.runtime.router import Router, parse_groups
    from medsamlite.training.daft import DaftSettings, train_daft

    import medsamlite

    # the golden fixture's weights: at 64 px they segment the synthetic cases (a fresh init gives empty maps)
    pretrained = medsamlite.create_model("efficientvit_sam_l0", input_size=64,
                                         checkpoint=golden_state_dict(golden_case_for("efficientvit_sam_l0")))
    pristine = {k: v.clone() for k, v in pretrained.state_dict().items()}
    model, results = train_daft(copy.deepcopy(pretrained), tiny_cases, Router(parse_groups("3D=CT,MR,PET;US")),
                                DaftSettings("lora", {"r": 2}), _tiny_config(tmp_path, max_steps=1))
    assert results["3D"]["steps"] >= 1 and results["US"]["steps"] >= 1
    base = adapters.unload(model.base).state_dict()
    assert base.keys() == pristine.keys()
    changed = [k for k in pristine if not torch.equal(base[k], pristine[k])]
    assert changed == [], f"{len(changed)} base tensors changed, e.g. {changed[:3]}"
    fallback = Predictor(model.plain("general"))
    reference = Predictor(pretrained)
    for path in (tiny_cases[0], tiny_cases[-1]):  # a 3D CT case (its group's adapter trained) and a 2D US one
        case = read_case(path)
        predict = "predict_2d" if case.kind == "2D" else "predict_3d"
        want = getattr(reference, predict)(case.imgs, case.boxes)
        assert want.any(), path.name
        np.testing.assert_array_equal(getattr(fallback, predict)(case.imgs, case.boxes), want, err_msg=path.name)
