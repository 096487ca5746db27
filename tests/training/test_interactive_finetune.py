"""Interactive fine-tuning on tiny models: clicks drawn from the errors, rounds that feed the mask back, a run
that trains and resumes exactly, and the command line."""
from __future__ import annotations

import json

import pytest
import torch

from medsamlite.data.datasets import NpzSliceDataset, case_files
from medsamlite.factory import build_model
from medsamlite.training.finetune import FinetuneConfig, FinetuneTask, finetune
from medsamlite.training.interactive import sample_clicks
from medsamlite.training.losses import get_loss
import tiny
from tiny import registered_tiny  # noqa: F401 (autouse: the tiny encoder registered)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


case_dir = tiny.cases_fixture(8)


def test_clicks_land_in_the_error_positive_on_missed_pixels_negative_on_spurious_ones():
    torch.manual_seed(0)
    truth = torch.zeros(3, 1, 8, 8)
    truth[:, :, 2:6, 2:6] = 1
    logits = torch.full((3, 1, 8, 8), -1.0)
    logits[0, :, 2:6, 2:4] = 1  # half found: every error is missed object
    logits[1] = 2 * truth[1] - 1  # exact: no error
    logits[2] = 1.0  # everything: every error is spurious background
    for _ in range(20):
        xy, positive = sample_clicks(logits, truth)
        x, y = xy.long().unbind(1)
        assert torch.equal(xy, xy.floor())
        assert 4 <= x[0] < 6 and 2 <= y[0] < 6 and positive[0] == 1  # inside the missed half
        assert 2 <= x[1] < 6 and 2 <= y[1] < 6 and positive[1] == 1  # no error: a positive click on the object
        assert not (2 <= x[2] < 6 and 2 <= y[2] < 6) and positive[2] == 0  # on the spurious background


def test_each_round_adds_a_click_and_feeds_the_previous_mask_back(case_dir):
    torch.manual_seed(0)
    net = build_model(tiny.CONFIG)
    data = NpzSliceDataset(case_files(case_dir), net.config, augment=False, targets_per_image=2)
    batch = torch.utils.data.default_collate([data[i] for i in range(2)])
    prompts = []
    net.prompt_encoder.register_forward_hook(lambda m, args, kwargs, out: prompts.append(kwargs), with_kwargs=True)
    encodes = []
    net.image_encoder.register_forward_hook(lambda m, i, o: encodes.append(1))
    task = FinetuneTask(net, get_loss("litemedsam"), frozen=(), interactive=3)
    loss, images, masks = task.step(task.module(), batch)
    assert len(encodes) == 1 and len(prompts) == 4 and images == 2
    assert prompts[0]["points"] is None and prompts[0]["masks"] is None
    for k, p in enumerate(prompts[1:], 1):
        assert p["points"][0].shape == (masks, k, 2) and p["masks"].shape[-2:] == batch["masks"].shape[-2:]
    loss.backward()
    for label in prompts[-1]["points"][1].unique().tolist():  # the embedding of each click kind drawn is trained
        assert net.prompt_encoder.point_embeddings[label].weight.grad.abs().sum() > 0


def test_interactive_needs_the_dense_decoder_and_a_round():
    net = build_model(tiny.CONFIG)
    with pytest.raises(ValueError, match="only the dense decoder"):
        FinetuneTask(net, get_loss("litemedsam"), decoder="factorised", interactive=2)
    from medsamlite.training.interactive import InteractiveForward
    with pytest.raises(ValueError, match="at least one click round"):
        InteractiveForward(net, 0)


class Interrupt(Exception):
    pass


def test_an_interactive_run_resumes_to_the_uninterrupted_result(tmp_path, case_dir):
    data = NpzSliceDataset(case_files(case_dir), tiny.CONFIG, seed=1, targets_per_image=2)
    common = dict(epochs=2, batch_size=4, lr=2e-3, save_every=2, progress=False, interactive=2,
                  freeze=("image_encoder",))
    torch.manual_seed(0)
    whole_model = build_model(tiny.CONFIG)
    whole = finetune(whole_model, data, None, FinetuneConfig(output_dir=str(tmp_path / "whole"), **common))
    steps = []

    def stop_at_3(model, optimizer):  # after step 3, before its save: the checkpoint of step 2 is the last
        steps.append(1)
        if len(steps) == 3:
            raise Interrupt

    torch.manual_seed(0)
    with pytest.raises(Interrupt):
        finetune(build_model(tiny.CONFIG), data, None, FinetuneConfig(output_dir=str(tmp_path / "split"), **common),
                 after_step=stop_at_3)
    torch.manual_seed(1)  # every weight comes from the checkpoint; the clicks from its RNG state
    resumed_model = build_model(tiny.CONFIG)
    resumed = finetune(resumed_model, data, None, FinetuneConfig(output_dir=str(tmp_path / "split"),
                                                                 resume=str(tmp_path / "split"), **common))
    assert resumed.steps == whole.steps == 4
    for (name, a), b in zip(whole_model.state_dict().items(), resumed_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_the_command_line_trains_interactively(tmp_path, case_dir):
    from medsamlite.checkpoints import save_model
    from medsamlite.cli import main

    save_model(build_model(tiny.CONFIG), tmp_path / "tiny")
    out = tmp_path / "run"
    assert main(["train", "finetune", str(case_dir), "--model", str(tmp_path / "tiny"), "--output", str(out),
                 "--epochs", "1", "--batch-size", "4", "--interactive", "2", "--freeze", "image_encoder",
                 "--no-flips", "--embedding-cache", "16", "--no-progress"]) == 0
    assert (out / "model" / "model.safetensors").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["interactive"] == 2 and run["config"]["embedding_cache"] == 16
    assert run["args"]["no_flips"] is True
