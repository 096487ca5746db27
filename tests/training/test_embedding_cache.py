"""A frozen image encoder computes each distinct image once during fine-tuning, and changes nothing else."""
from __future__ import annotations

import pytest
import torch

from medsamlite.data.datasets import NpzSliceDataset, case_files
from medsamlite.factory import build_model, load_model
from medsamlite.training.finetune import FinetuneConfig, FinetuneTask, finetune
from medsamlite.training.frozen import CachedEncoder
from medsamlite.training.losses import get_loss
import tiny
from tiny import registered_tiny  # noqa: F401 (autouse: the tiny encoder registered)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

case_dir = tiny.cases_fixture(6)


def counted(net: torch.nn.Module) -> list[int]:
    """A list that grows by the batch size at each pass of `net`'s image encoder."""
    calls: list[int] = []
    net.image_encoder.register_forward_hook(lambda m, inputs, out: calls.append(len(inputs[0])))
    return calls


def batch_of(net: torch.nn.Module, case_dir) -> dict:
    data = NpzSliceDataset(case_files(case_dir), net.config, augment=False, targets_per_image=2)
    return torch.utils.data.default_collate([data[i] for i in range(3)])


@pytest.mark.parametrize("interactive", [0, 2])
def test_a_frozen_encoder_encodes_a_repeated_batch_once_with_the_same_loss(case_dir, interactive):
    torch.manual_seed(0)
    net = build_model(tiny.CONFIG)
    batch = batch_of(net, case_dir)
    calls = counted(net)
    plain = FinetuneTask(net, get_loss("litemedsam"), frozen=("image_encoder",), interactive=interactive)
    cached = FinetuneTask(net, get_loss("litemedsam"), frozen=("image_encoder",), interactive=interactive,
                          embedding_cache=8)
    assert plain.encoder is None and isinstance(cached.encoder, CachedEncoder)
    losses = []
    for task in (plain, cached, cached):
        torch.manual_seed(1)  # the same clicks
        losses.append(task.step(task.module(), batch)[0])
    assert calls == [3, 1, 1, 1]  # the plain step, then the cached task's first, an image at a time; its second none
    torch.testing.assert_close(losses[1], losses[0])  # batch of 1 or 3: the same up to rounding
    assert torch.equal(losses[1], losses[2])
    losses[2].backward()
    assert all(p.grad is None for p in net.image_encoder.parameters())
    assert any(p.grad is not None for p in net.mask_decoder.parameters())


def test_an_encoder_that_trains_is_never_cached(case_dir):
    net = build_model(tiny.CONFIG)
    batch = batch_of(net, case_dir)
    calls = counted(net)
    task = FinetuneTask(net, get_loss("litemedsam"), frozen=("prompt_encoder",), embedding_cache=8)
    assert task.encoder is None
    for _ in range(2):
        task.step(task.module(), batch)
    assert calls == [3, 3]


def test_the_cache_keeps_the_newest_images_and_stays_in_eval_mode():
    encoder = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    cache = CachedEncoder(encoder, size=2).train()
    assert not encoder.training  # frozen: running statistics never move
    images = torch.randn(3, 1, 4, 4)
    first = cache(images)
    assert len(cache.cache) == 2  # the oldest image dropped
    assert torch.equal(cache(images[1:]), first[1:])


def test_a_finetune_with_a_frozen_encoder_encodes_each_image_once(tmp_path, case_dir):
    """Two epochs over unflipped items and their validation: every distinct image through the encoder once."""
    torch.manual_seed(0)
    net = build_model(tiny.CONFIG)
    files = case_files(case_dir)
    train_data = NpzSliceDataset(files[:4], net.config, slices="all", augment=False, targets_per_image=2)
    val_data = NpzSliceDataset(files[4:], net.config, slices="all", augment=False, targets_per_image=2)
    calls = counted(net)
    config = FinetuneConfig(output_dir=str(tmp_path), epochs=2, batch_size=2, progress=False, save_every=None,
                            freeze=("image_encoder", "prompt_encoder"), early_stopping_patience=None)
    finetune(net, train_data, val_data, config)
    distinct = {train_data[i]["image"].numpy().tobytes() for i in range(len(train_data))}
    distinct |= {val_data[i]["image"].numpy().tobytes() for i in range(len(val_data))}
    assert sum(calls) == len(calls) == len(distinct) > 0
    saved = load_model(tmp_path / "model")  # the cache wrapped no module: the saved model loads as it was built
    for name, value in net.state_dict().items():
        assert torch.equal(saved.state_dict()[name], value), name
