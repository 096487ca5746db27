"""End-to-end training on tiny synthetic cases: fine-tuning learns, resume replays, distillation copies heads."""
from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REPO
from medsamlite import registry
from medsamlite.factory import load_model
from medsamlite.config import ModelConfig
from medsamlite.data.datasets import NpzImageDataset, NpzSliceDataset, case_files, split_cases
from medsamlite.data.samplers import ModalityBalancedSampler
from medsamlite.models.common import LayerNorm2d
from medsamlite.factory import build_model
from medsamlite.registry import EncoderSpec
from medsamlite.training.distill import DistillConfig, distill
from medsamlite.training.finetune import FinetuneConfig, evaluate, finetune
from medsamlite.training.losses import get_loss

GRID, DIM = 16, 64  # embedding grid and width of the tiny test models (low-res masks 64 x 64)


def tiny_encoder(input_size: int = 64, width: int = 16) -> nn.Module:
    """Two stride-2 convs, pooled to the 16 x 16 grid: a trainable stand-in cheap enough for CI."""
    return nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.GELU(), nn.Conv2d(width, 2 * width, 3, 2, 1), nn.GELU(),
                         nn.AdaptiveAvgPool2d(GRID), nn.Conv2d(2 * width, DIM, 1), LayerNorm2d(DIM))


@pytest.fixture()
def tiny_config(monkeypatch) -> ModelConfig:
    """A SamLite config on a test-only encoder, registered for this test only."""
    monkeypatch.setitem(registry._ENCODERS, "tiny_cnn_test", EncoderSpec("tiny_cnn_test", tiny_encoder))
    return ModelConfig(name="tiny_test", encoder="tiny_cnn_test", input_size=64, embed_size=GRID, embed_dim=DIM)


def write_cases(root: Path, n: int, seed: int = 0, size: int = 64) -> Path:
    """2D cases in the task layout: one or two bright ellipses (labels 1, 2) on a noisy background."""
    rng = np.random.default_rng(seed)
    (root / "imgs").mkdir(parents=True)
    (root / "gts").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        image = rng.normal(60, 20, size=(size, size)).clip(0, 255)
        gts = np.zeros((size, size), np.uint8)
        for label in range(1, 1 + rng.integers(1, 3)):
            cy, cx = rng.integers(14, size - 14, size=2)
            ry, rx = rng.integers(5, 12, size=2)
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            gts[inside & (gts == 0)] = label
            image[inside] += rng.uniform(80, 140)
        image = np.repeat(image.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
        name = f"2DBox_{('Endoscopy', 'Dermoscopy')[i % 2]}_{i:04d}.npz"
        np.savez_compressed(root / "imgs" / name, imgs=image, boxes=np.zeros((0, 4)), spacing=np.ones(2))
        np.savez_compressed(root / "gts" / name, gts=gts)
    return root


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory) -> Path:
    return write_cases(tmp_path_factory.mktemp("cases"), 24)


def datasets(case_dir: Path, config: ModelConfig):
    train_files, val_files = split_cases(case_files(case_dir), val_fraction=0.25, seed=0)
    return (NpzSliceDataset(train_files, config, seed=1),
            NpzSliceDataset(val_files, config, augment=False, seed=2))


def test_finetune_lowers_val_loss_and_raises_dsc(tmp_path, tiny_config, case_dir):
    torch.manual_seed(0)
    model = build_model(tiny_config)
    train, val = datasets(case_dir, tiny_config)
    assert train[0]["mask"].shape == (1, 64, 64)
    loss_fn = get_loss("litemedsam")
    before_loss, before_dsc = evaluate(model, val, loss_fn)
    sampler = ModalityBalancedSampler(train.modalities, probabilities={"Endoscopy": 0.5}, num_samples=40, seed=0)
    config = FinetuneConfig(output_dir=str(tmp_path / "run"), epochs=20, batch_size=4, lr=2e-3,
                            early_stopping_patience=None, progress=False)
    result = finetune(model, train, val, config, sampler=sampler)
    assert result.steps == 200 and result.epochs == 20 and not result.stopped_early
    assert result.best_val_loss < 0.6 * before_loss
    best = load_model(tmp_path / "run" / "best")
    best_loss, best_dsc = evaluate(best, val, loss_fn)
    assert best_loss == pytest.approx(result.best_val_loss, rel=1e-5)
    assert best_dsc > before_dsc + 0.3 and best_dsc > 0.6
    # the prompt encoder is frozen by default
    assert torch.equal(best.prompt_encoder.point_embeddings[0].weight, model.prompt_encoder.point_embeddings[0].weight)
    with (tmp_path / "run" / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(20)) and int(rows[-1]["step"]) == 200
    assert set(rows[0]) == {"epoch", "step", "train_loss", "val_loss", "val_dsc", "lr", "seconds"}
    assert float(rows[-1]["val_dsc"]) > before_dsc
    assert sampler.realised_proportions()["Endoscopy"] == pytest.approx(0.5, abs=0.1)


def test_resume_replays_the_uninterrupted_run(tmp_path, tiny_config, case_dir):
    train, val = datasets(case_dir, tiny_config)
    common = dict(batch_size=4, lr=1e-3, progress=False, freeze=("prompt_encoder", "image_encoder"))

    def run(out: str, epochs: int, resume: str | None = None, calls: list | None = None):
        torch.manual_seed(0)
        model = build_model(tiny_config)
        hook = None if calls is None else (lambda m, opt: calls.append(opt.param_groups[0]["lr"]))
        config = FinetuneConfig(output_dir=str(tmp_path / out), epochs=epochs, resume=resume, **common)
        return model, finetune(model, train, val, config, after_step=hook)

    calls: list = []
    full_model, full = run("full", 4, calls=calls)
    assert len(calls) == full.steps == 4 * math.ceil(len(train) / 4)
    run("split", 2)
    resumed_model, resumed = run("split", 4, resume=str(tmp_path / "split"))
    assert resumed.steps == full.steps and len(resumed.history) == 4
    for a, b in zip(full.history, resumed.history):
        assert a["step"] == b["step"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    with (tmp_path / "split" / "log.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2, 3]
    # frozen parts did not move
    torch.manual_seed(0)
    fresh = build_model(tiny_config)
    for a, b in zip(fresh.image_encoder.parameters(), full_model.image_encoder.parameters()):
        assert torch.equal(a, b)


def test_finetune_rejects_bad_settings(tmp_path, tiny_config, case_dir):
    model = build_model(tiny_config)
    train, _ = datasets(case_dir, tiny_config)
    with pytest.raises(ValueError, match="match no parameter"):
        finetune(model, train, None, FinetuneConfig(output_dir=str(tmp_path), freeze=("encoder",), progress=False))
    with pytest.raises(ValueError, match="box-prompted"):
        finetune(model, train, None, FinetuneConfig(output_dir=str(tmp_path), loss="partial_bce", progress=False))
    with pytest.raises(FileNotFoundError, match="no training state"):
        finetune(model, train, None, FinetuneConfig(output_dir=str(tmp_path), resume=str(tmp_path / "nope"),
                                                    progress=False))


def test_early_stopping_without_improvement(tmp_path, tiny_config, case_dir):
    model = build_model(tiny_config)
    train, val = datasets(case_dir, tiny_config)
    config = FinetuneConfig(output_dir=str(tmp_path), epochs=10, lr=0.0, early_stopping_patience=2,
                            max_steps=30, progress=False)
    result = finetune(model, train, val, config)  # lr 0: the validation loss never improves after epoch 0
    assert result.stopped_early and result.epochs == 3 and result.best_epoch == 0


def test_distill_learns_teacher_embeddings_and_copies_heads(tmp_path, tiny_config, case_dir):
    torch.manual_seed(0)
    teacher = build_model(tiny_config.replace(name="teacher", input_size=128, normalization="imagenet"))
    student = build_model(tiny_config)
    data = NpzImageDataset(case_dir, {"student": student.config, "teacher": teacher.config})
    item = data[0]
    assert item["student"].shape == (3, 64, 64) and item["teacher"].shape == (3, 128, 128)

    def gap() -> float:
        with torch.no_grad():
            batch = torch.utils.data.default_collate([data[i] for i in range(8)])
            pred, target = student.encode(batch["student"]), teacher.encode(batch["teacher"])
            return float(torch.nn.functional.mse_loss(pred, target))

    before = gap()
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = distill(student, teacher, data, DistillConfig(output_dir=str(tmp_path / "student"), epochs=30,
                                                           max_steps=60, lr=3e-3, progress=False))
    assert result.steps == 60 and len(result.losses) == 60
    assert gap() < 0.5 * before
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10])
    for k, v in teacher.state_dict().items():  # the teacher is untouched
        assert torch.equal(v, teacher_state[k])
    for part in ("prompt_encoder", "mask_decoder"):
        for (k, a), b in zip(getattr(student, part).state_dict().items(), getattr(teacher, part).state_dict().values()):
            assert torch.equal(a, b), k
    saved = load_model(tmp_path / "student")
    assert saved.config.input_size == 64
    assert (tmp_path / "student" / "distill_log.csv").exists()


def test_cli_parser_imports_no_torch():
    code = ("import argparse, sys\n"
            "from medsamlite.cli import train as cli\n"
            "p = argparse.ArgumentParser(); cli.add_arguments(p)\n"
            "a = p.parse_args(['finetune', 'DATA', '--modality-probabilities', 'CT=0.4', 'MR=0.1'])\n"
            "assert cli._probabilities(a.modality_probabilities) == {'CT': 0.4, 'MR': 0.1}\n"
            "assert p.parse_args(['daft', 'DATA', '--method', 'arena']).method == 'arena'\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_cli_finetune_and_distill(tmp_path, tiny_config, case_dir, capsys):
    from medsamlite.checkpoints import save_model
    from medsamlite.cli import main

    torch.manual_seed(0)
    save_model(build_model(tiny_config), tmp_path / "tiny")
    save_model(build_model(tiny_config.replace(input_size=128)), tmp_path / "teacher")
    assert main(["train", "finetune", str(case_dir), "--model", str(tmp_path / "tiny"), "--output",
                 str(tmp_path / "ft"), "--epochs", "2", "--lr", "1e-3", "--no-progress", "--samples-per-epoch", "8",
                 "--modality-probabilities", "Endoscopy=0.75"]) == 0
    assert "2 epochs, 4 steps" in capsys.readouterr().out
    assert load_model(tmp_path / "ft" / "best").config.input_size == 64
    assert main(["train", "finetune", str(case_dir), "--model", str(tmp_path / "tiny"), "--output",
                 str(tmp_path / "ft"), "--epochs", "3", "--no-progress", "--samples-per-epoch", "8",
                 "--resume", str(tmp_path / "ft")]) == 0
    assert "3 epochs, 6 steps" in capsys.readouterr().out
    assert main(["train", "distill", str(case_dir), "--student", str(tmp_path / "tiny"), "--teacher",
                 str(tmp_path / "teacher"), "--output", str(tmp_path / "st"), "--max-steps", "3",
                 "--no-progress"]) == 0
    assert "3 steps" in capsys.readouterr().out
    assert load_model(tmp_path / "st").config.input_size == 64
