"""The one training loop on tiny models: fine-tuning learns, a stopped and resumed run equals an uninterrupted one
(finetune, distill, daft), K targets per image, accumulation, precision, checkpoints, logs, the teacher cache."""
from __future__ import annotations

import csv
from contextlib import nullcontext
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REPO
from medsamlite.data.datasets import NpzImageDataset, NpzSliceDataset, case_files, split_cases
from medsamlite.data.samplers import ModalityBalancedSampler
from medsamlite.factory import build_model, load_model
from medsamlite.training import state
from medsamlite.training.distill import DistillConfig, distill
from medsamlite.training.finetune import BoxForward, FinetuneConfig, FinetuneTask, evaluate, finetune
from medsamlite.training.losses import get_loss
import tiny
from tiny import registered_tiny  # noqa: F401 (autouse: the tiny encoder registered)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


case_dir = tiny.cases_fixture(16)


def model(seed: int = 0, **changes):
    torch.manual_seed(seed)
    return build_model(tiny.CONFIG.replace(**changes))


def datasets(case_dir: Path):
    train_files, val_files = split_cases(case_files(case_dir), val_fraction=0.25, seed=0)
    return (NpzSliceDataset(train_files, tiny.CONFIG, seed=1),
            NpzSliceDataset(val_files, tiny.CONFIG, augment=False, seed=2))


def k_targets(cases, config, k: int) -> NpzSliceDataset:
    """Items with K targets (the data contract), without augmentation."""
    return NpzSliceDataset(cases, config, augment=False, targets_per_image=k)


class Interrupt(Exception):
    pass


def stop_at(call: int):
    """An after_step hook that kills the run at its `call`-th optimiser step (after the step, before its save)."""
    calls = []

    def hook(model, optimizer):
        calls.append(1)
        if len(calls) == call:
            raise Interrupt
    return hook


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-6) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=atol, msg=name)


def test_finetune_learns_and_writes_its_outputs(tmp_path, case_dir):
    net = model()
    train, val = datasets(case_dir)
    loss_fn = get_loss("litemedsam")
    before_loss, before_dsc = evaluate(net, val, loss_fn)
    sampler = ModalityBalancedSampler(train.modalities, probabilities={"Endoscopy": 0.5}, num_samples=24, seed=0)
    config = FinetuneConfig(output_dir=str(tmp_path / "run"), epochs=8, batch_size=4, lr=3e-3, warmup_steps=4,
                            save_every=20, keep=2, early_stopping_patience=None, progress=False)
    result = finetune(net, train, val, config, sampler=sampler)
    assert result.steps == 48 and result.epochs == 8 and not result.stopped_early
    assert result.best_val_loss < 0.8 * before_loss
    best = load_model(tmp_path / "run" / "best")
    assert evaluate(best, val, loss_fn)[0] == pytest.approx(result.best_val_loss, rel=1e-5)
    assert load_model(tmp_path / "run" / "model").config == net.config
    torch.manual_seed(0)  # the prompt encoder is frozen by default
    assert torch.equal(best.prompt_encoder.point_embeddings[0].weight, model().prompt_encoder.point_embeddings[0].weight)
    assert [p.name for p in state.list_checkpoints(tmp_path / "run")] == ["step-00000040", "step-00000048"]
    assert not list((tmp_path / "run" / "checkpoints").glob(".*"))  # no staging folder left
    with (tmp_path / "run" / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    train_rows = [r for r in rows if r["phase"] == "train"]
    assert [int(r["step"]) for r in train_rows] == list(range(1, 49))
    assert all(float(r["images_per_s"]) > 0 and float(r["masks_per_s"]) > 0 for r in train_rows)
    lrs = [float(r["lr"]) for r in train_rows]  # warmup then cosine
    assert lrs[:4] == pytest.approx([3e-3 * s / 4 for s in (1, 2, 3, 4)]) and lrs[-1] < 1e-4
    assert [int(r["epoch"]) for r in rows if r["phase"] == "epoch"] == list(range(8))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["world_size"] == 1 and run["precision"] == "f32" and run["seed"] == 0 and run["steps"] == 48
    assert len(run["rank_digests"]) == 1
    assert sampler.realised_proportions()["Endoscopy"] == pytest.approx(0.5, abs=0.15)


def test_finetune_resume_equals_the_uninterrupted_run(tmp_path, case_dir):
    train, val = datasets(case_dir)
    common = dict(epochs=3, batch_size=4, lr=2e-3, warmup_steps=2, save_every=2, progress=False,
                  grad_clip=1.0, freeze=("prompt_encoder", "image_encoder"))

    full_model = model()
    full = finetune(full_model, train, val, FinetuneConfig(output_dir=str(tmp_path / "full"), **common))
    with pytest.raises(Interrupt):  # killed at step 5, after the checkpoint of step 4: mid-epoch
        finetune(model(), train, val, FinetuneConfig(output_dir=str(tmp_path / "split"), **common),
                 after_step=stop_at(5))
    assert state.find_checkpoint(tmp_path / "split").name == "step-00000004"
    resumed_model = model(seed=1)  # every weight comes from the checkpoint
    resumed = finetune(resumed_model, train, val,
                       FinetuneConfig(output_dir=str(tmp_path / "split"), resume=str(tmp_path / "split"), **common))
    assert resumed.steps == full.steps == 9
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=0, atol=1e-6)
    assert [h["val_loss"] for h in resumed.history] == pytest.approx([h["val_loss"] for h in full.history], abs=1e-6)
    assert_same_weights(full_model, resumed_model)
    with (tmp_path / "split" / "log.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f) if r["phase"] == "train"] == list(range(1, 10))


def test_distill_resume_equals_the_uninterrupted_run_and_copies_heads(tmp_path, case_dir):
    teacher = model(seed=5, input_size=128, normalization="imagenet")
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}

    def run(out: str, **extra):
        student = model()
        data = NpzImageDataset(case_dir, {"student": student.config, "teacher": teacher.config}, seed=3)
        config = DistillConfig(output_dir=str(tmp_path / out), epochs=2, batch_size=4, lr=3e-3, save_every=3,
                               progress=False, **{k: v for k, v in extra.items() if k != "after_step"})
        return student, distill(student, teacher, data, config, after_step=extra.get("after_step"))

    full_student, full = run("full")
    assert full.steps == 8 and full.losses[-1] < full.losses[0]
    with pytest.raises(Interrupt):
        run("split", after_step=stop_at(5))
    resumed_student, resumed = run("split", resume=str(tmp_path / "split"))
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=0, atol=1e-6)
    assert_same_weights(full_student, resumed_student)
    for k, v in teacher.state_dict().items():  # the teacher is untouched
        assert torch.equal(v, teacher_state[k])
    for part in ("prompt_encoder", "mask_decoder"):
        for (k, a), b in zip(getattr(resumed_student, part).state_dict().items(),
                             getattr(teacher, part).state_dict().values()):
            assert torch.equal(a, b), k
    assert load_model(tmp_path / "split").config.input_size == 64


def test_daft_resume_equals_the_uninterrupted_run(tmp_path, case_dir):
    from medsamlite import adapters
    from medsamlite.runtime.router import Router, parse_groups
    from medsamlite.training.daft import DaftSettings, train_daft

    router = Router(parse_groups("Endoscopy;Dermoscopy"))
    settings = DaftSettings("lora", {"r": 2, "alpha": 4})

    def run(out: str, resume: bool = False, after_step=None):
        config = FinetuneConfig(output_dir=str(tmp_path / out), epochs=1, max_steps=3, batch_size=2, lr=1e-2,
                                save_every=1, progress=False, resume="yes" if resume else None)
        return train_daft(model(), case_files(case_dir), router, settings, config, after_step=after_step)

    full, full_results = run("full")
    with pytest.raises(Interrupt):  # in the first group's third step
        run("split", after_step=stop_at(3))
    resumed, results = run("split", resume=True)
    for group in ("Endoscopy", "Dermoscopy"):
        assert results[group]["steps"] == full_results[group]["steps"] == 3
        a, b = adapters.adapter_state_dict(full.base, group), adapters.adapter_state_dict(resumed.base, group)
        assert a.keys() == b.keys() and any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_k_targets_one_encoder_pass_one_decoder_call_loss_over_valid_masks(case_dir):
    net = model()
    data = k_targets(case_dir, net.config, 3)
    batch = torch.utils.data.default_collate([data[i] for i in range(4)])
    valid = batch["valid"]
    assert valid.sum() < valid.numel() and valid[:, 0].all()  # some images have fewer than 3 labels
    calls = {"encode": [], "decode": []}
    net.image_encoder.register_forward_hook(lambda m, i, o: calls["encode"].append(len(i[0])))
    net.mask_decoder.register_forward_hook(lambda m, i, o: calls["decode"].append(len(o[0])))
    task = FinetuneTask(net, get_loss("litemedsam"))
    loss, images, masks = task.step(task.module(), batch)
    assert calls == {"encode": [4], "decode": [int(valid.sum())]} and (images, masks) == (4, int(valid.sum()))
    # the same loss as every valid box decoded on its own image
    logits, ious, targets = [], [], []
    with torch.no_grad():
        for i, j in valid.nonzero().tolist():
            lo, iou = net(batch["image"][i:i + 1], batch["boxes"][i, j:j + 1])
            logits.append(lo), ious.append(iou), targets.append(batch["masks"][i, j:j + 1])
    expected = get_loss("litemedsam")(torch.cat(logits), torch.cat(targets), torch.cat(ious))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_the_factorised_decoder_gives_the_dense_loss_and_gradients(case_dir):
    data = k_targets(case_dir, tiny.CONFIG, 3)
    batch = torch.utils.data.default_collate([data[i] for i in range(4)])
    grads = {}
    for decoder in ("dense", "factorised"):
        net = model()
        task = FinetuneTask(net, get_loss("litemedsam"), decoder=decoder)
        loss, images, masks = task.step(task.module(), batch)
        loss.backward()
        grads[decoder] = (float(loss), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    (dense, g_dense), (factorised, g_fact) = grads["dense"], grads["factorised"]
    assert factorised == pytest.approx(dense, rel=1e-5) and set(g_fact) <= set(g_dense)
    scale = max(g.abs().max() for g in g_dense.values())
    for name, g in g_dense.items():  # relative to the largest gradient: key biases' are zero up to rounding;
        # the factorised decoder skips the unused multimask heads, whose dense gradients are zero
        other = g_fact.get(name, torch.zeros_like(g))
        assert float((g - other).abs().max()) <= 1e-4 * float(scale), name
    with pytest.raises(ValueError, match="expected one of dense, factorised"):
        FinetuneTask(model(), get_loss("litemedsam"), decoder="sparse")


def test_k_targets_train_and_validate(tmp_path, case_dir):
    data = k_targets(case_dir, tiny.CONFIG, 3)
    result = finetune(model(), data, data, FinetuneConfig(output_dir=str(tmp_path), epochs=2, batch_size=4, lr=3e-3,
                                                          progress=False))
    assert result.steps == 8 and np.isfinite(result.best_val_loss)
    with (tmp_path / "log.csv").open() as f:
        row = next(csv.DictReader(f))
    assert float(row["masks_per_s"]) > float(row["images_per_s"])


def test_grad_accumulation_equals_the_larger_batch(tmp_path, case_dir):
    data = k_targets(case_dir, tiny.CONFIG, 1)  # one valid mask per image: batch means are comparable
    common = dict(max_steps=4, lr=1e-4, progress=False, freeze=tiny.decoder_only(model()))
    big, small = model(), model()
    a = finetune(big, data, None, FinetuneConfig(output_dir=str(tmp_path / "a"), batch_size=4, **common))
    b = finetune(small, data, None, FinetuneConfig(output_dir=str(tmp_path / "b"), batch_size=2, grad_accum=2,
                                                   **common))
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5)
    assert_same_weights(big, small, atol=1e-5)


def test_bf16_trains_on_cpu_and_fp16_needs_cuda(tmp_path, case_dir):
    data = k_targets(case_dir, tiny.CONFIG, 2)
    result = finetune(model(), data, None, FinetuneConfig(output_dir=str(tmp_path / "bf16"), max_steps=2,
                                                          precision="bf16", progress=False))
    assert result.steps == 2 and np.isfinite(result.losses).all()
    assert json.loads((tmp_path / "bf16" / "run.json").read_text())["precision"] == "bf16"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
            finetune(model(), data, None, FinetuneConfig(output_dir=str(tmp_path / "fp16"), precision="fp16"))


def test_teacher_cache_is_reused_and_bypassed_when_augmenting(tmp_path, case_dir):
    teacher = model(seed=5, input_size=128)
    cache = tmp_path / "cache"

    def run(out: str, augment: bool = False):
        student = model()
        data = NpzImageDataset(case_dir, {"student": student.config, "teacher": teacher.config}, augment=augment)
        config = DistillConfig(output_dir=str(tmp_path / out), epochs=2, batch_size=4, lr=1e-3,
                               teacher_cache=str(cache), progress=False)
        return distill(student, teacher, data, config)

    first = run("a")
    files = sorted(cache.rglob("*.npy"))
    assert len(files) == 16 and np.load(files[0]).dtype == np.float16
    assert files[0].parent.parent.name.startswith("tiny_test-128-minmax-")
    stamps = [f.stat().st_mtime_ns for f in files]
    second = run("b")  # every embedding read from the cache, none rewritten; the same targets
    assert [f.stat().st_mtime_ns for f in sorted(cache.rglob("*.npy"))] == stamps
    np.testing.assert_allclose(second.losses, first.losses, rtol=1e-6)
    with pytest.warns(UserWarning, match="teacher cache bypassed"):
        run("c", augment=True)


def test_bad_settings_fail_with_one_line(tmp_path, case_dir):
    train, _ = datasets(case_dir)
    with pytest.raises(ValueError, match="match no parameter"):
        finetune(model(), train, None, FinetuneConfig(output_dir=str(tmp_path), freeze=("encoder",), progress=False))
    with pytest.raises(ValueError, match="box-prompted"):
        finetune(model(), train, None, FinetuneConfig(output_dir=str(tmp_path), loss="partial_bce", progress=False))
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        finetune(model(), train, None, FinetuneConfig(output_dir=str(tmp_path), resume=str(tmp_path / "nope"),
                                                      progress=False))


def test_a_loss_that_is_no_longer_finite_stops_the_run_naming_the_step(tmp_path, case_dir):
    train, _ = datasets(case_dir)

    def poison(model, optimizer):  # after step 2's update: the weights the next forward uses are NaN
        if optimizer.state and len(poison.calls) == 1:
            with torch.no_grad():
                model.mask_decoder.output_upscaling[0].weight.fill_(float("nan"))
        poison.calls.append(1)
    poison.calls = []
    config = FinetuneConfig(output_dir=str(tmp_path), epochs=2, max_steps=6, save_every=None, progress=False)
    with pytest.raises(FloatingPointError, match=r"^step 3: the loss is nan \(precision no\)"):
        finetune(model(), train, None, config, after_step=poison)


def test_early_stopping_without_improvement(tmp_path, case_dir):
    train, val = datasets(case_dir)
    config = FinetuneConfig(output_dir=str(tmp_path), epochs=10, lr=0.0, early_stopping_patience=2, max_steps=30,
                            progress=False)
    result = finetune(model(), train, val, config)  # lr 0: the validation loss never improves after epoch 0
    assert result.stopped_early and result.epochs == 3 and result.best_epoch == 0


def test_cli_parser_imports_no_torch():
    code = ("import argparse, sys\n"
            "from medsamlite.cli import train as cli\n"
            "p = argparse.ArgumentParser(); cli.add_arguments(p)\n"
            "a = p.parse_args(['finetune', 'DATA', '--modality-probabilities', 'CT=0.4', 'MR=0.1'])\n"
            "assert cli._probabilities(a.modality_probabilities) == {'CT': 0.4, 'MR': 0.1}\n"
            "assert a.targets_per_image == 5 and a.precision is None  # the launcher's, else f32\n"
            "assert p.parse_args(['daft', 'DATA', '--method', 'arena', '--resume', 'x']).method == 'arena'\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_cli_finetune_resume_and_distill(tmp_path, case_dir, capsys):
    from medsamlite.checkpoints import save_model
    from medsamlite.cli import main

    save_model(model(), tmp_path / "tiny")
    save_model(model(input_size=128), tmp_path / "teacher")
    common = ["--model", str(tmp_path / "tiny"), "--output", str(tmp_path / "ft"), "--lr", "1e-3", "--no-progress",
              "--samples-per-epoch", "8", "--targets-per-image", "0", "--save-every", "2"]
    assert main(["train", "finetune", str(case_dir), *common, "--epochs", "2", "--modality-probabilities",
                 "Endoscopy=0.75"]) == 0
    assert "2 epochs, 4 steps on 1 process(es)" in capsys.readouterr().out
    assert load_model(tmp_path / "ft" / "best").config.input_size == 64
    assert main(["train", "finetune", str(case_dir), *common, "--epochs", "3", "--resume", str(tmp_path / "ft")]) == 0
    assert "3 epochs, 6 steps" in capsys.readouterr().out
    assert main(["train", "distill", str(case_dir), "--student", str(tmp_path / "tiny"), "--teacher",
                 str(tmp_path / "teacher"), "--output", str(tmp_path / "st"), "--max-steps", "3", "--no-progress",
                 "--teacher-cache", str(tmp_path / "cache")]) == 0
    assert "3 steps" in capsys.readouterr().out
    assert load_model(tmp_path / "st").config.input_size == 64 and list((tmp_path / "cache").rglob("*.npy"))
    with pytest.raises(SystemExit, match="fp16 needs a CUDA GPU") if not torch.cuda.is_available() else nullcontext():
        main(["train", "finetune", str(case_dir), *common, "--precision", "fp16", "--max-steps", "1"])


def test_sync_bn_where_batchnorm_trains_under_several_cuda_processes():
    from medsamlite.training.loop import use_sync_bn

    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_sync_bn(None, net, 2, cuda) and use_sync_bn(True, net, 2, cuda)
    assert not use_sync_bn(None, net, 1, cuda) and not use_sync_bn(False, net, 2, cuda)
    assert not use_sync_bn(None, net, 2, cpu)  # the default stays off where torch has no kernel
    with pytest.raises(ValueError, match="SyncBatchNorm has no CPU kernel"):
        use_sync_bn(True, net, 2, cpu)
    net[1].requires_grad_(False)  # frozen BatchNorm runs in eval mode: nothing to synchronise
    assert not use_sync_bn(None, net, 2, cuda)


def test_a_model_folder_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from medsamlite.training import finetune as ft

    ft.save_best(model(seed=0), tmp_path / "best")
    before = (tmp_path / "best" / "model.safetensors").read_bytes()

    def fails_midway(net, directory):
        (directory / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # a kill while writing

    real = ft.save_model
    monkeypatch.setattr(ft, "save_model", fails_midway)
    with pytest.raises(KeyboardInterrupt):
        ft.save_best(model(seed=1), tmp_path / "best")
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temporary folder left
    monkeypatch.setattr(ft, "save_model", real)
    ft.save_best(model(seed=1), tmp_path / "best")
    saved = load_model(tmp_path / "best").mask_decoder.iou_token.weight
    assert torch.equal(saved, model(seed=1).mask_decoder.iou_token.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
