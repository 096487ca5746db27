"""Adapters: which parameters train, identity at start, merge equality, save/load, ARENA's proximal step."""
from __future__ import annotations

import copy
import re
from functools import lru_cache

import numpy as np
import pytest
import torch
from torch import nn

import medsamlite
from medsamlite import adapters
from medsamlite.adapters.arena import ArenaSettings, ProximalStep, arena_config, soft_threshold_
from medsamlite.adapters.tuners import inject
from medsamlite.adapters.targets import adaptable, default_patterns, resolve_targets
from medsamlite.factory import get_encoder_spec

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SMALL = dict(input_size=64)  # EfficientViT takes any multiple of 32: a cheap whole-model forward


def one_model_per_encoder() -> list[str]:
    """Every registered encoder once (a new encoder is tested by being registered)."""
    chosen: dict[str, str] = {}
    for name in medsamlite.list_models():
        chosen.setdefault(medsamlite.get_model_config(name).encoder, name)
    return sorted(chosen.values())


@lru_cache(maxsize=1)
def _small_base() -> nn.Module:
    torch.manual_seed(0)
    return medsamlite.create_model("efficientvit_sam_l0", **SMALL)


def small_model() -> nn.Module:
    """A fresh copy of one randomly initialised small model (copying is cheaper than building)."""
    return copy.deepcopy(_small_base())


def inputs(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    s = model.config.input_size
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, s, s, generator=g), torch.tensor([[4.0, 6.0, 40.0, 50.0]])


def run(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs(model))[0]


def randomize_adapters(model: nn.Module, scale: float = 0.05) -> None:
    """Non-zero B factors and uneven gates, so that an adapter changes the output."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if re.search(r"\.lora_(A|B)\.", name):
                p.copy_(torch.randn(p.shape, generator=g) * scale)
            elif ".lora_gate." in name:
                p.copy_(torch.rand(p.shape, generator=g))


def layer_input(layer: nn.Module) -> torch.Tensor:
    base = layer.get_base_layer()
    g = torch.Generator().manual_seed(2)
    if isinstance(base, nn.Linear):
        return torch.randn(3, base.in_features, generator=g)
    return torch.randn(1, base.in_channels, 9, 9, generator=g)


def test_registered_default_targets_cover_every_encoder() -> None:
    for name in one_model_per_encoder():
        model = medsamlite.create_model(name)
        layers = resolve_targets(model, default_patterns(model))
        assert layers and all(adaptable(model.get_submodule(n)) for n in layers), name


EXPECTED = {
    "lora": lambda n: re.search(r"\.lora_(A|B)\.default\.", n),
    "arena": lambda n: re.search(r"\.lora_(A|B|gate)\.default(\.|$)", n),
    "bitfit": lambda n: n.startswith("image_encoder.") and n.endswith(".bias"),
    "norm": lambda n: n.startswith("image_encoder.") and re.search(r"(norm|bn|\.ln)", n, re.I),
    "full": lambda n: True,
}


@pytest.mark.parametrize("method", list(EXPECTED))
def test_only_the_adapter_gets_gradients(method: str) -> None:
    model = small_model()
    adapters.apply(model, method)
    model.train()
    logits, iou = model(*inputs(model))
    (logits.mean() + iou.mean()).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad and with_grad <= trainable
    assert all(EXPECTED[method](n) for n in trainable), sorted(n for n in trainable if not EXPECTED[method](n))[:5]
    frozen_grads = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not frozen_grads


def test_decoder_options() -> None:
    model = adapters.apply(small_model(), "lora", include_decoder=True, train_decoder=True, r=2)
    targets = adapters.records(model)["default"].targets
    assert any(t.startswith("mask_decoder.transformer.") for t in targets)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("mask_decoder.modules_to_save.default.") for n in trainable)
    assert not any("original_module" in n for n in trainable)
    bitfit = adapters.apply(small_model(), "bitfit", include_decoder=True)
    assert any(n.startswith("mask_decoder.") for n, p in bitfit.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("method", ["lora", "arena"])
def test_identity_at_start_and_merge_equality(method: str) -> None:
    model = small_model()
    before = run(model)
    adapters.apply(model, method, include_decoder=True, r=4)
    assert torch.equal(run(model), before)
    randomize_adapters(model)
    adapted = run(model)
    assert (adapted - before).abs().max() > 1e-3  # the adapter does change the model
    merged = adapters.merge(model)
    assert type(merged) is type(model) and not any("lora" in n for n, _ in merged.named_parameters())
    assert torch.allclose(run(merged), adapted, atol=1e-5, rtol=0)
    assert set(merged.state_dict()) == set(small_model().state_dict())


def test_named_adapters_switch_and_keep_their_own_decoder() -> None:
    model = small_model()
    base = run(model)
    adapters.apply(model, "lora", adapter_name="ct", train_decoder=True, r=2)
    adapters.apply(model, "lora", adapter_name="us", train_decoder=True, r=2)
    randomize_adapters(model)
    with torch.no_grad():
        model.mask_decoder.modules_to_save["us"].iou_token.weight.add_(1.0)
    outputs = {}
    for name in ("ct", "us"):
        adapters.set_adapter(model, name)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all(re.search(rf"\.(lora_[AB]|modules_to_save)\.{name}\.", n) for n in trainable)
        outputs[name] = run(model)
    assert not torch.allclose(outputs["ct"], outputs["us"])
    assert torch.allclose(run(adapters.merge(model, "ct")), outputs["ct"], atol=1e-5, rtol=0)
    assert torch.equal(run(adapters.unload(model)), base)


@pytest.mark.parametrize("method", ["lora", "arena", "bitfit", "norm"])
def test_adapter_save_load_round_trip(method: str, tmp_path) -> None:
    model = adapters.apply(small_model(), method, train_decoder=method == "lora")
    randomize_adapters(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and method in ("bitfit", "norm"):
                p.add_(0.01)
    path = adapters.save_adapter(model, tmp_path / "a.safetensors")
    fresh = adapters.load_adapter(small_model(), path)
    assert torch.equal(run(fresh), run(model))
    saved, loaded = adapters.adapter_state_dict(model), adapters.adapter_state_dict(fresh)
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert adapters.trainable_parameters(fresh) == adapters.trainable_parameters(model)


def test_load_adapter_rejects_another_encoder(tmp_path) -> None:
    path = adapters.save_adapter(adapters.apply(small_model(), "lora"), tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match=r"a\.safetensors.*'encoder'.*repvit"):
        adapters.load_adapter(medsamlite.create_model("repvit_m0_6_medsam"), path)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="unknown adaptation method 'dora'"):
        adapters.apply(small_model(), "dora")
    with pytest.raises(TypeError, match=r"\['rank'\].*'lora'"):
        adapters.apply(small_model(), "lora", rank=4)
    with pytest.raises(ValueError, match="depthwise"):
        adapters.apply(small_model(), "lora", targets=r".*depth_conv\.conv")
    model = adapters.apply(small_model(), "lora")
    with pytest.raises(ValueError, match="only for one peft method"):
        adapters.apply(model, "bitfit", adapter_name="b")


def test_soft_threshold_zeroes_components_below_threshold() -> None:
    v = torch.tensor([0.5, -0.0005, 0.002, -0.3, 0.001])
    soft_threshold_(v, 0.001)
    assert torch.allclose(v, torch.tensor([0.499, 0.0, 0.001, -0.299, 0.0]))
    assert (v == 0).sum() == 2  # exactly zero, not merely small


def test_proximal_step_uses_each_group_learning_rate() -> None:
    model = inject(nn.Sequential(nn.Linear(8, 8)), arena_config(["0"], ArenaSettings(r=4), False), "a")
    gate = model[0].lora_gate["a"]
    with torch.no_grad():
        gate.copy_(torch.tensor([1.0, 0.05, -0.02, 0.2]))
    optimizer = torch.optim.SGD([{"params": [gate], "lr": 0.1}], lr=1.0)
    ProximalStep(lam=0.5)(model, optimizer)  # threshold = 0.1 * 0.5
    assert torch.allclose(gate, torch.tensor([0.95, 0.0, 0.0, 0.15]))
    assert adapters.effective_ranks(model) == {"0": 2}


def _toy_arena(lam: float) -> tuple[dict[str, int], float, float]:
    """Fit a rank-2 update with an initial rank of 8; returns the effective rank and first/last losses."""
    torch.manual_seed(0)
    model = inject(nn.Sequential(nn.Linear(32, 32)), arena_config(["0"], ArenaSettings(r=8, alpha=8), False), "a")
    update = torch.randn(32, 2) @ torch.randn(2, 32) * 0.1
    base = model[0].get_base_layer()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    prox, losses = ProximalStep(lam), []
    for _ in range(400):
        x = torch.randn(64, 32)
        with torch.no_grad():
            y = base(x) + x @ update.T
        loss = ((model(x) - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        prox(model, optimizer)
        losses.append(float(loss))
    return adapters.effective_ranks(model), losses[0], float(np.mean(losses[-20:]))


def test_penalty_drives_rank_down_on_a_toy_problem() -> None:
    free_rank, _, _ = _toy_arena(lam=0.0)
    rank, first, last = _toy_arena(lam=1.0)
    assert free_rank == {"0": 8}
    assert 2 <= rank["0"] < 8
    assert last < 0.01 * first


def test_merged_model_compiles_with_the_adapted_outputs(tmp_path) -> None:
    """merge -> export.compile (ONNX Runtime): embeddings, logits and IoU equal the adapted torch model's."""
    from medsamlite.export import compile

    model = adapters.apply(small_model(), "arena", include_decoder=True, r=4)
    randomize_adapters(model)
    image, box = inputs(model)
    with torch.no_grad():
        embedding = model.encode(image)
        logits, iou = model.decode(embedding, box)
    engine = compile(adapters.merge(model), "onnxruntime", cache_dir=tmp_path)
    compiled_embedding = engine.encode(image.numpy())
    compiled_logits, compiled_iou = engine.decode(compiled_embedding, box.numpy())
    np.testing.assert_allclose(compiled_embedding, embedding.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(compiled_logits, logits.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(compiled_iou, iou.numpy(), atol=1e-5, rtol=0)
