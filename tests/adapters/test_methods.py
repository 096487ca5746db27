"""Every registered method: identity at start, only its parameters train, merge == unmerged (or a clear refusal),
save/load round trip; peft's own layout for LoRA; the methods that cannot merge export as they are."""
from __future__ import annotations

import copy
from functools import lru_cache

import numpy as np
import pytest
import torch
from torch import nn

import medsamlite
from medsamlite import adapters
from medsamlite.adapters.registry import PEFT, get_method

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# small settings; the Linear-only peft methods reach Linear layers through the decoder (EfficientViT is all convs)
SETTINGS = {
    "lora": dict(r=2), "arena": dict(r=2), "adalora": dict(init_r=4, target_r=2, total_step=10, include_decoder=True),
    "ia3": {}, "vera": dict(r=8, include_decoder=True), "adaptformer": dict(bottleneck=4),
    "spatial": dict(hidden=4),
}


@lru_cache(maxsize=1)
def _small_base() -> nn.Module:
    torch.manual_seed(0)
    return medsamlite.create_model("efficientvit_sam_l0", input_size=64)


def small_model() -> nn.Module:
    """A fresh copy of one randomly initialised small model (EfficientViT takes any multiple of 32)."""
    return copy.deepcopy(_small_base())


def inputs(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    s = model.config.input_size
    return torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(1)), torch.tensor([[4.0, 6.0, 40.0, 50.0]])


def run(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs(model))[0]


def perturb_trainable(model: torch.nn.Module, scale: float = 0.05) -> None:
    """Move every trainable tensor, as training would."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def test_every_builtin_method_is_registered() -> None:
    assert set(adapters.list_methods()) >= {"lora", "arena", "adalora", "ia3", "vera", "bitfit", "norm", "full",
                                            "decoder", "adaptformer", "probe", "spatial"}


@pytest.mark.parametrize("method", adapters.list_methods())
def test_identity_at_start_merge_and_round_trip(method: str, tmp_path) -> None:
    model = small_model()
    before = run(model)
    adapters.apply(model, method, **SETTINGS.get(method, {}))
    assert torch.equal(run(model), before), "the adapted model must start unchanged"
    summary = adapters.summary(model)
    assert 0 < summary.trainable == adapters.trainable_parameters(model) <= summary.total
    rec = adapters.records(model)["default"]
    if get_method(method).kind != PEFT:
        assert {n for n, p in model.named_parameters() if p.requires_grad} == set(rec.parameters)
    perturb_trainable(model)
    adapted = run(model)
    assert (adapted - before).abs().max() > 1e-4, "the method's parameters must change the output"
    if get_method(method).merges:
        merged = adapters.merge(model)
        assert set(merged.state_dict()) == set(small_model().state_dict())
        assert torch.allclose(run(merged), adapted, atol=1e-5, rtol=0)
    else:
        with pytest.raises(ValueError, match=f"'{method}' cannot be merged"):
            adapters.merge(model)
        assert torch.equal(run(adapters.unload(model)), before)
    fresh = adapters.load_adapter(small_model(), adapters.save_adapter(model, tmp_path / "a.safetensors"))
    assert torch.equal(run(fresh), adapted)
    assert adapters.trainable_parameters(fresh) == adapters.trainable_parameters(model)


def test_decoder_preset_trains_the_decoder_only() -> None:
    model = adapters.apply(small_model(), "decoder")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("mask_decoder.")}


def test_probe_is_a_linear_map_of_the_mask_features() -> None:
    """logits gain w·F for the decoder's upscaled mask features F (computed here by hand)."""
    model = adapters.apply(small_model(), "probe")
    (w,) = [p for p in model.parameters() if p.requires_grad]
    assert w.shape == (model.config.embed_dim // 8,)
    features = {}
    model.mask_decoder.output_upscaling.register_forward_hook(lambda m, i, o: features.setdefault("F", o))
    before = run(model)
    with torch.no_grad():
        w.copy_(torch.linspace(-1, 1, w.numel()))
    after = run(model)
    expected = torch.einsum("c,bchw->bhw", w.detach(), features["F"])[:, None]
    assert torch.allclose(after - before, expected, atol=1e-4, rtol=1e-4)


def test_black_box_adapter_sends_no_gradient_into_the_encoder() -> None:
    model = adapters.apply(small_model(), "spatial", hidden=4)
    perturb_trainable(model)
    logits, iou = model(*inputs(model))
    (logits.mean() + iou.mean()).backward()
    assert all(p.grad is None for p in model.image_encoder.base.parameters())
    assert all(p.grad is not None for p in model.image_encoder.block.parameters())


def test_targets_are_refused_by_methods_without_them() -> None:
    with pytest.raises(TypeError, match="'spatial' takes no targets"):
        adapters.apply(small_model(), "spatial", targets=".*")


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_peft_layout_opens_with_peft(method: str, tmp_path) -> None:
    from peft import PeftModel

    model = adapters.apply(small_model(), method, **SETTINGS.get(method, {}))
    perturb_trainable(model)
    adapted = run(model)
    folder = adapters.save_pretrained(model, tmp_path / "peft")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in folder.iterdir()}
    opened = PeftModel.from_pretrained(small_model(), str(folder)).eval()
    with torch.no_grad():
        assert torch.equal(opened(*inputs(model))[0], adapted)
    assert torch.equal(run(adapters.load_adapter(small_model(), folder)), adapted)


def test_arena_has_no_peft_layout(tmp_path) -> None:
    with pytest.raises(ValueError, match="'arena' has no peft layout"):
        adapters.save_pretrained(adapters.apply(small_model(), "arena", r=2), tmp_path / "peft")


@pytest.mark.parametrize("method", ["adaptformer", "spatial"])
def test_unmerged_methods_export_through_compile(method: str, tmp_path) -> None:
    from medsamlite.export import compile

    model = adapters.apply(small_model(), method, **SETTINGS[method])
    perturb_trainable(model)
    image, box = inputs(model)
    with torch.no_grad():
        embedding = model.encode(image)
        logits, _ = model.decode(embedding, box)
    engine = compile(model, "onnxruntime", cache_dir=tmp_path)
    compiled_embedding = engine.encode(image.numpy())
    np.testing.assert_allclose(compiled_embedding, embedding.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(engine.decode(compiled_embedding, box.numpy())[0], logits.numpy(), atol=1e-4, rtol=0)


def test_adalora_hook_allocates_ranks_in_the_training_loop(tmp_path) -> None:
    # the loop's own order (the hook after the optimiser step, before the gradients are cleared), not a copy of it
    from medsamlite.training.config import FinetuneConfig
    from medsamlite.training.finetune import finetune

    model = adapters.apply(small_model(), "adalora", init_r=4, target_r=1, total_step=4, include_decoder=True)
    image, box = inputs(model)
    m = model.config.low_res_size
    mask = torch.zeros(1, m, m)
    mask[:, m // 4:m // 2, m // 4:m // 2] = 1
    data = [{"image": image[0], "box": box[0], "mask": mask}] * 4
    config = FinetuneConfig(output_dir=str(tmp_path), max_steps=6, epochs=6, batch_size=2, lr=1e-2, freeze=(),
                            save_every=None, progress=False)
    finetune(model, data, None, config, after_step=adapters.after_step(model))
    pattern = model.peft_config["default"].rank_pattern
    kept = sum(int(np.sum(v)) for v in pattern.values())
    assert pattern and kept < 4 * len(pattern)  # the budget pruned components


@pytest.mark.parametrize("method", ["adalora", "vera"])
def test_linear_only_methods_on_a_convolutional_encoder_say_what_to_do(method: str) -> None:
    # EfficientViT's encoder adapts through 1x1 convolutions: peft's AdaLoRA and VeRA have no Conv2d layer
    model = medsamlite.create_model("efficientvit_sam_l0_256")
    with pytest.raises(ValueError, match="wraps Linear layers only and these targets are convolutions"):
        adapters.apply(copy.deepcopy(model), method)
    adapted = adapters.apply(model, method, include_decoder=True)
    wrapped = [n for n, m in adapted.named_modules() if n.startswith("mask_decoder") and hasattr(m, "base_layer")]
    assert wrapped and not any(n.startswith("image_encoder") and hasattr(m, "base_layer")
                               for n, m in adapted.named_modules())
