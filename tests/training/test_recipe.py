"""The student recipe on tiny settings: it learns, and a run in pieces equals an uninterrupted one."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from medsamlite.training.recipe import RECIPES, build_student, measure, prepare_data, run_recipe
from medsamlite.training.recipe_names import RECIPE_NAMES

TINY = dataclasses.replace(RECIPES["student-v1"], synthetic_images=8, real_images=False, held_out=0.34,
                           batch_size=2, warmup_steps=2, save_every=3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images and teacher cache shared by the runs below (as runs of one recipe may share them)."""
    return tmp_path_factory.mktemp("recipe-data")


def test_the_command_line_lists_every_recipe():
    assert tuple(RECIPES) == RECIPE_NAMES


def test_the_recipe_raises_agreement_above_the_untrained_students(tmp_path: Path, data_dir: Path):
    from medsamlite.factory import create_model

    plan = run_recipe(TINY, tmp_path / "run", steps=16, data_dir=data_dir)
    teacher = create_model(TINY.teacher, pretrained=True)
    untrained = measure(build_student(TINY, teacher), teacher, prepare_data(TINY, data_dir), data_dir)
    before, after = untrained["heldout/synthetic"]["mean"], plan["agreement"]["heldout/synthetic"]["mean"]
    assert plan["steps_done"] == 16 and (tmp_path / "run" / "student" / "model.safetensors").exists()
    assert after > before, f"agreement {before:.3f} untrained, {after:.3f} after 16 steps"


def test_a_run_in_pieces_equals_an_uninterrupted_run(tmp_path: Path, data_dir: Path):
    from medsamlite.factory import load_model

    whole = run_recipe(TINY, tmp_path / "whole", steps=6, data_dir=data_dir)
    first = run_recipe(TINY, tmp_path / "pieces", steps=6, piece_minutes=0.001, data_dir=data_dir)
    assert 0 < first["steps_done"] < 6, "the first piece should stop at its time limit"
    second = run_recipe(TINY, tmp_path / "pieces", data_dir=data_dir)
    assert whole["steps_done"] == second["steps_done"] == 6
    # equal within float noise: tensors restored from a checkpoint sit at other addresses than fresh ones, and
    # oneDNN's kernels may then block a product differently (seen: 1e-8 on weights, 1e-6 on BatchNorm statistics)
    a, b = (load_model(tmp_path / run / "student").state_dict() for run in ("whole", "pieces"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_planned_run_refuses_another_recipe(tmp_path: Path, data_dir: Path):
    run_recipe(TINY, tmp_path / "run", steps=1, data_dir=data_dir)
    with pytest.raises(ValueError, match="other settings"):
        run_recipe(dataclasses.replace(TINY, lr=1.0), tmp_path / "run", data_dir=data_dir)


def test_a_data_folder_made_with_other_settings_is_refused(data_dir: Path):
    prepare_data(TINY, data_dir)
    with pytest.raises(ValueError, match="use another data folder"):
        prepare_data(dataclasses.replace(TINY, synthetic_images=9), data_dir)


def test_the_command_line_plans_resumes_and_draws_the_curve(tmp_path: Path, data_dir: Path, monkeypatch):
    from medsamlite.cli import main
    from medsamlite.training import recipe

    monkeypatch.setitem(recipe.RECIPES, "student-v1", TINY)
    out = str(tmp_path / "run")
    base = ["train", "student", "--output", out, "--data-dir", str(data_dir)]
    with pytest.raises(SystemExit, match="has no planned run"):
        main(base + ["--resume"])
    assert main(base + ["--steps", "2", "--curve"]) == 0
    assert (tmp_path / "run" / "curve.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="pass --resume"):
        main(base + ["--steps", "2"])
    assert main(base + ["--resume"]) == 0  # already done: measures again, trains nothing


def test_random_boxes_lie_inside_each_images_extent():
    from medsamlite.training.distill import random_boxes

    torch.manual_seed(0)
    extent = torch.tensor([[256, 256], [100, 256], [256, 40]])
    boxes = random_boxes(extent, 50)
    assert boxes.shape == (3, 50, 4)
    h, w = extent[:, None, 0].float(), extent[:, None, 1].float()
    assert (boxes[..., 0] >= 0).all() and (boxes[..., 1] >= 0).all()
    assert (boxes[..., 2] <= w + 1e-4).all() and (boxes[..., 3] <= h + 1e-4).all()
    sides = boxes[..., 2:] - boxes[..., :2]
    assert (sides >= 4 - 1e-4).all() and sides[0].max() > 100 and sides[0].min() < 30  # small and large boxes


def test_the_mask_term_pulls_the_students_masks_towards_the_teachers(data_dir: Path):
    from torch.utils.data import default_collate

    from medsamlite.data.datasets import NpzImageDataset
    from medsamlite.factory import create_model
    from medsamlite.training.distill import DistillTask

    teacher = create_model(TINY.teacher, pretrained=True)
    student = build_student(TINY, teacher)
    parts = prepare_data(TINY, data_dir)
    data = NpzImageDataset(parts["train"][:2], {"student": student.config, "teacher": teacher.config}, augment=False)
    batch = default_collate([data[0], data[1]])
    mse_only = DistillTask(student, teacher, mask_weight=0.0)
    with_masks = DistillTask(student, teacher, mask_weight=1.0, mask_boxes=2)
    torch.manual_seed(0)
    plain, _, no_masks = mse_only.step(student.image_encoder, batch)
    torch.manual_seed(0)
    total, images, masks = with_masks.step(student.image_encoder, batch)
    assert (images, masks, no_masks) == (2, 4, 0)
    assert total > plain  # the student differs from the teacher: its masks do too
    total.backward()
    assert student.image_encoder.up[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())  # the frozen decoder passes gradients, keeps none


def test_a_finished_run_ships_fp16_weights_that_load_with_their_sha256(tmp_path: Path, data_dir: Path):
    from medsamlite.checkpoints import load_checkpoint
    from medsamlite.factory import create_model, load_model
    from medsamlite.runtime.files import file_digest
    from medsamlite.training.recipe import ship_student

    run = tmp_path / "run"
    with pytest.raises(ValueError, match="not finished"):
        ship_student(run, tmp_path / "w.safetensors", data_dir)
    run_recipe(TINY, run, steps=2, data_dir=data_dir)
    # three held-out images: one box's edge moving by a pixel moves their mean by more than the default 0.005
    shipped = ship_student(run, tmp_path / "w.safetensors", data_dir, tolerance=0.05)
    assert shipped["sha256"] == file_digest(tmp_path / "w.safetensors")
    assert shipped["precision"] == "fp16"  # two steps from the teacher's weights: fp16 rounding changes little
    kept = ship_student(run, tmp_path / "f32.safetensors", data_dir, tolerance=-1.0)  # no rounding is good enough
    assert kept["precision"] == "f32" and kept["agreement_shipped"] == kept["agreement"]
    f32 = create_model("litemedsam_s8")
    load_checkpoint(f32, tmp_path / "f32.safetensors")
    for name, value in f32.state_dict().items():
        assert torch.equal(value, load_model(run / "student").state_dict()[name]), name
    model = create_model("litemedsam_s8")
    load_checkpoint(model, tmp_path / "w.safetensors")
    trained = load_model(run / "student").state_dict()
    for name, value in model.state_dict().items():  # floats rounded through fp16; counters exact
        expected = trained[name].half().to(value.dtype) if value.is_floating_point() else trained[name]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)
