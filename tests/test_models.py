"""The model matrix: every registered model through every part of the library; its facts come from its registry entry.

A new entry is tested by being registered: build and shapes, parameter counts against the reference's, golden
parity (its own fixture, or the fixture of a model with the same encoder), save/load, strict checkpoint errors,
export on each backend, each adapter method, and predict in 2D and 3D.
"""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import medsamlite
from conftest import cache_dir, golden_arrays, golden_case_for, golden_state_dict, max_rel_error, torch_model  # noqa: F401
from medsamlite.checkpoints import CheckpointError, load_checkpoint
from medsamlite.constants import RUNTIME_BACKENDS
from medsamlite.data.synthetic import make_case
from medsamlite.runtime import Predictor

MODELS = medsamlite.list_models()
GOLDEN = [m for m in MODELS if medsamlite.get_model_spec(m).golden]
TOL = 1e-4  # max abs error relative to each reference array's max abs value
HEADS = {"prompt_encoder": 6_220, "mask_decoder": 4_058_340}  # SAM's heads, shared by every entry


def test_every_model_is_proven_by_a_golden_fixture_and_has_reference_counts():
    for name in MODELS:
        spec = medsamlite.get_model_spec(name)
        assert golden_case_for(name) or spec.distilled_from in GOLDEN, \
            f"{name}: no golden fixture for encoder {spec.config.encoder}, nor a proven teacher"
        assert spec.reference_params, f"{name}: no reference parameter counts in its registry entry"


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    torch.manual_seed(0)
    return medsamlite.create_model(request.param)


def test_encode_decode_shapes(model):
    s = model.config.input_size
    with torch.no_grad():
        emb = model.encode(torch.rand(1, 3, s, s))
        assert emb.shape == (1, *model.config.embedding_shape)
        boxes = torch.tensor([[10.0, 20.0, s / 2, s - 5], [0, 0, s - 1, s - 1]])
        logits, iou = model.decode(emb, boxes)
        assert logits.shape == (2, 1, model.config.low_res_size, model.config.low_res_size)
        assert iou.shape == (2, 1)
        multi, multi_iou = model.decode(emb, boxes, multimask_output=True)
        assert multi.shape[:2] == (2, 3) and multi_iou.shape == (2, 3)
        assert torch.isfinite(logits).all()


def test_parameter_counts_equal_the_reference(model):
    counts = model.parameter_counts()
    total, encoder = medsamlite.get_model_spec(model.config.name).reference_params
    assert (counts["total"], counts["image_encoder"]) == (total, encoder)
    assert {k: counts[k] for k in HEADS} == HEADS


def test_boxes_decoded_together_equal_one_by_one(model):
    s = model.config.input_size
    with torch.no_grad():
        emb = model.encode(torch.rand(1, 3, s, s))
        boxes = torch.tensor([[10.0, 20.0, s / 2, s - 5], [s / 4, s / 4, s - 1, s - 1]])
        together, _ = model.decode(emb, boxes)
        alone = torch.cat([model.decode(emb, b[None])[0] for b in boxes])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


def test_save_load_round_trip(model, tmp_path):
    medsamlite.save_model(model, tmp_path)
    again = medsamlite.load_model(tmp_path)
    assert again.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


def test_strict_load_names_missing_unexpected_and_mismatched(model):
    sd = dict(model.state_dict())
    key = next(iter(sd))
    sd.pop(key)
    sd["image_encoder.not_a_layer.weight"] = torch.zeros(1)
    decoder_key = "mask_decoder.iou_token.weight"
    sd[decoder_key] = torch.zeros(2, 256)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, sd)
    text = str(err.value)
    assert key in text and "not_a_layer" in text and decoder_key in text and model.config.name in text
    assert len(text.splitlines()) <= 5


# golden parity ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=GOLDEN)
def golden(request):
    name = request.param
    case = medsamlite.get_model_spec(name).golden
    model = medsamlite.create_model(name)
    report = load_checkpoint(model, golden_state_dict(case), strict=True)
    model.eval()
    arrays = golden_arrays(case)
    with torch.no_grad():
        emb = model.encode(torch.from_numpy(arrays["image"]))
        out = {"image_embedding": emb.numpy()}
        for b in (1, 3):
            logits, iou = model.decode(emb, torch.from_numpy(arrays[f"boxes{b}"]))
            out[f"low_res_logits{b}"], out[f"iou{b}"] = logits.numpy(), iou.numpy()
    return case, model, arrays, out, report


@pytest.mark.parametrize("output", ["image_embedding", "low_res_logits1", "iou1", "low_res_logits3", "iou3"])
def test_golden_outputs(golden, output):
    case, _, arrays, out, _ = golden
    err = max_rel_error(out[output], arrays[output])
    assert err <= TOL, f"{case} {output}: max abs error {err:.2e} of max |ref|"


def test_golden_save_load_round_trip_is_exact(golden, tmp_path):
    case, model, arrays, out, _ = golden
    medsamlite.save_model(model, tmp_path / case)
    again = medsamlite.load_model(tmp_path / case)
    with torch.no_grad():
        emb = again.encode(torch.from_numpy(arrays["image"])).numpy()
    np.testing.assert_array_equal(emb, out["image_embedding"])


# export on each backend ------------------------------------------------------------------------------

class Reference:
    """Torch outputs of one model with its golden weights, computed once and compared with every backend."""

    def __init__(self, name: str) -> None:
        model = torch_model(name)
        size = model.config.input_size
        self.images = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
        self.boxes = np.array([[10, 20, 120, 200], [60, 30, 250, 180], [0, 0, 255, 255]], np.float32) * (size / 256)
        arrays = golden_arrays(golden_case_for(name))
        self.image = np.round(arrays["image"][0].transpose(1, 2, 0) * 255).astype(np.uint8)
        self.golden_boxes = arrays["boxes3"]
        with torch.no_grad():
            embedding = model.encode(torch.from_numpy(self.images))
            self.logits, self.iou = (t.numpy() for t in model.decode(embedding, torch.from_numpy(self.boxes)))
        self.embedding = embedding.numpy()
        self.segs = Predictor(model).predict_2d(self.image, self.golden_boxes)


_REFERENCES: dict[str, Reference] = {}


def reference(name: str) -> Reference:
    if name not in _REFERENCES:
        _REFERENCES[name] = Reference(name)
    return _REFERENCES[name]


@pytest.mark.parametrize("backend", RUNTIME_BACKENDS)
@pytest.mark.parametrize("name", MODELS)
def test_compiled_matches_torch(name, backend, cache_dir):
    from medsamlite.export import compile

    model, ref = torch_model(name), reference(name)
    compiled = compile(model, backend, cache_dir=cache_dir, precision="f32")
    assert compiled.precision == "f32" and compiled.backend == backend and compiled.config == model.config
    embedding = compiled.encode(ref.images)
    assert embedding.shape == (1, 256, 64, 64)
    assert max_rel_error(embedding, ref.embedding) <= 1e-3
    logits, iou = compiled.decode(ref.embedding, ref.boxes)
    assert logits.shape == (3, 1, 256, 256) and iou.shape == (3, 1)
    assert max_rel_error(logits, ref.logits) <= 1e-3 and max_rel_error(iou, ref.iou) <= 1e-3
    segs = Predictor(compiled).predict_2d(ref.image, ref.golden_boxes)
    agreement = (segs == ref.segs).mean()
    assert segs.shape == ref.image.shape[:2]
    assert agreement >= 0.999, f"{name} on {backend}: masks agree on {agreement:.5f}"


# adapters ----------------------------------------------------------------------------------------------

def _randomize_adapters(model, scale: float = 0.05) -> None:
    """Non-zero B factors and uneven gates, so that an adapter changes the output."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if re.search(r"\.lora_(A|B)\.", name):
                p.copy_(torch.randn(p.shape, generator=g) * scale)
            elif ".lora_gate." in name:
                p.copy_(torch.rand(p.shape, generator=g))


def _layer_input(layer) -> torch.Tensor:
    base = layer.get_base_layer()
    g = torch.Generator().manual_seed(2)
    if isinstance(base, torch.nn.Linear):
        return torch.randn(3, base.in_features, generator=g)
    return torch.randn(1, base.in_channels, 9, 9, generator=g)


@pytest.mark.parametrize("method", ["lora", "arena"])
@pytest.mark.parametrize("name", MODELS)
def test_adapter_wraps_adaptable_layers_starts_as_identity_and_merges(name, method):
    from medsamlite import adapters
    from medsamlite.adapters.targets import adaptable

    model = medsamlite.create_model(name)
    adapters.apply(model, method, r=4)
    wrapped = {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert set(wrapped) == set(adapters.records(model)["default"].targets) and wrapped
    assert all(adaptable(m.get_base_layer()) for m in wrapped.values())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(re.search(r"\.lora_(A|B|gate)\.default", n) for n in trainable)
    assert adapters.summary(model).trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        for layer in wrapped.values():  # B = 0: the adapted layer is its base layer
            x = _layer_input(layer)
            assert torch.equal(layer(x), layer.get_base_layer()(x))
        _randomize_adapters(model)
        adapted = {n: (_layer_input(m), m(_layer_input(m))) for n, m in wrapped.items()}
    merged = adapters.merge(model)
    assert not any(hasattr(m, "lora_A") for m in merged.modules())
    with torch.no_grad():
        for n, (x, y) in adapted.items():
            assert torch.allclose(merged.get_submodule(n)(x), y, atol=1e-5, rtol=1e-5), n


# predict ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_predict_2d_and_3d_label_every_box_in_its_region(name):
    """With golden weights, a 2D and a 3D case give label maps of the image's shape with labels only 0..N."""
    predictor = Predictor(torch_model(name))
    for case in (make_case("US", 0, size=0.25), make_case("CT", 0, size=0.2, depth=0.25)):
        segs = predictor.predict_3d(case.imgs, case.boxes) if case.kind == "3D" else \
            predictor.predict_2d(case.imgs, case.boxes)
        assert segs.shape == case.gts.shape and segs.dtype == np.uint8
        assert set(np.unique(segs)) <= set(range(len(case.boxes) + 1))
        for label, box in enumerate(case.boxes, start=1):  # a label never leaves its box's slab
            if case.kind == "3D":
                z = np.nonzero((segs == label).any(axis=(1, 2)))[0]
                assert z.size == 0 or (z.min() >= box[2] and z.max() <= box[5]), (name, label)


# facts -------------------------------------------------------------------------------------------------

def test_encoder_swap_keeps_heads_and_drops_the_pretrained_source():
    model = medsamlite.create_model("litemedsam", encoder="repvit_m0_6_medsam")
    assert model.config.encoder == "repvit_m0_6_medsam"
    assert model.parameter_counts()["image_encoder"] == medsamlite.get_model_spec("repvit_m0_6_medsam").reference_params[1]
    with pytest.raises(CheckpointError, match="no packaged pretrained weights"):
        medsamlite.create_model("litemedsam", encoder="repvit_m0_6_medsam", pretrained=True)


def test_unknown_model_error_lists_registered():
    with pytest.raises(KeyError, match="litemedsam"):
        medsamlite.create_model("no_such_model")


def test_models_without_packaged_weights_say_so():
    no_weights = [m for m in MODELS if medsamlite.get_model_spec(m).pretrained is None]
    with pytest.raises(CheckpointError, match="no packaged pretrained weights"):
        medsamlite.create_model(no_weights[0], pretrained=True)


def test_pretrained_weights_load_strictly_with_their_checksum():
    from medsamlite.factory import pretrained_path

    for name in (m for m in MODELS if medsamlite.get_model_spec(m).pretrained):
        path = pretrained_path(name)
        model = medsamlite.create_model(name)
        report = load_checkpoint(model, path, strict=True)
        assert not report.missing and not report.unexpected


def test_import_and_models_command_are_torch_free():
    code = ("import sys, medsamlite; from medsamlite.cli import main; medsamlite.list_models(); main(['models']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    total = medsamlite.get_model_spec("litemedsam").reference_params[0]
    assert "litemedsam" in out and f"{total:,}" in out


def test_the_click_trained_entry_keeps_litemedsams_encoder_and_retrains_its_heads():
    """litemedsam_clicks: LiteMedSAM's encoder (rounded to fp16 as shipped), its prompt encoder and decoder trained."""
    base, clicks = (medsamlite.create_model(n, pretrained=True).state_dict() for n in ("litemedsam", "litemedsam_clicks"))
    assert base.keys() == clicks.keys()
    for name, value in base.items():
        if name.startswith("image_encoder.") and value.is_floating_point():
            assert torch.equal(clicks[name], value.half().float()), name
    heads = [n for n in base if n.startswith(("prompt_encoder.", "mask_decoder."))]
    assert sum(not torch.equal(base[n].half().float(), clicks[n]) for n in heads) > len(heads) / 2
