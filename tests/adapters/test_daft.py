"""Data-aware fine-tuning: routing by file name (and meta-features), per-group adapters, training, export."""
from __future__ import annotations

import argparse
import copy
from functools import lru_cache

import numpy as np
import pytest
import torch

import medsamlite
from medsamlite import adapters
from medsamlite.adapters.daft import DataAwareModel
from medsamlite.training.daft import DaftSettings, train_daft
from medsamlite.runtime.metafeatures import MetaClassifier
from medsamlite.runtime.router import Router, parse_groups
from medsamlite.runtime.modality import parse_modality
from medsamlite.data.synthetic import MODALITIES, make_case, write_dataset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# the task's test names (2DBox_/3DBox_), training names (modality first), and names that say nothing
ROUTES = {
    "3DBox_CT_0566.npz": "3D", "3DBox_MR_0121.npz": "3D", "3DBox_PET_0001.npz": "3D",
    "2DBox_X-Ray_0053.npz": "XRay", "2DBox_Endoscopy_0086.npz": "Endoscopy",
    "2DBox_Microscope_0016.npz": "Microscopy", "2DBox_US_0007.npz": "US", "2DBox_Dermoscopy_0001.npz": "Dermoscopy",
    "2DBox_Fundus_0002.npz": "Fundus", "2DBox_OCT_0003.npz": "OCT", "2DBox_Mammography_0004.npz": "Mammography",
    "CT_AbdomenCT1K_Case_00001.npz": "3D", "/data/imgs/MR_BraTS_T1_003.npz": "3D", "XRay_Chest_0001.npz": "XRay",
    "Microscopy_NeurIPS_cell_01.npz": "Microscopy",
    "2DBox_Thermal_0001.npz": "general", "scan_0001.npz": "general", "3DBox_0001.npz": "general", "": "general",
}


@pytest.mark.parametrize("name", list(ROUTES))
def test_default_router_follows_the_task_names(name: str) -> None:
    assert Router().route(name) == ROUTES[name]


def test_custom_groups_overrides_and_fallback() -> None:
    router = Router(parse_groups("3D=CT,MR,PET; US"), fallback="base", overrides={"*_CTA_*": "CT"})
    assert router.groups == {"3D": ("CT", "MR", "PET"), "US": ("US",)}
    assert [router.route(n) for n in ("3DBox_PET_1.npz", "2DBox_US_1.npz", "2DBox_X-Ray_1.npz", "angio_CTA_01.npz")
            ] == ["3D", "US", "base", "3D"]
    assert router.names == ["3D", "US", "base"]
    assert Router.from_dict(router.to_dict()) == router


def test_router_rejects_bad_groups() -> None:
    with pytest.raises(ValueError, match="'CT' is in groups '3D' and 'CT'"):
        Router({"3D": ("CT", "MR"), "CT": ("CT",)})
    with pytest.raises(ValueError, match="fallback 'US' is also a modality group"):
        Router({"US": ("US",)}, fallback="US")
    with pytest.raises(ValueError, match="'=CT'"):
        parse_groups("=CT")
    with pytest.raises(ValueError, match="unknown keys"):
        Router.from_dict({"groups": {}, "extra": 1})


def test_meta_feature_classifier_routes_names_that_do_not_say() -> None:
    train = [make_case(m, i, size=0.15) for m in MODALITIES for i in range(3)]
    held_out = [make_case(m, i, size=0.15) for m in MODALITIES for i in range(3, 5)]
    classifier = MetaClassifier.fit([c.imgs for c in train], [parse_modality(c.name) for c in train])
    predicted = [classifier.predict(c.imgs) for c in held_out]
    truth = [parse_modality(c.name) for c in held_out]
    assert np.mean([p == t for p, t in zip(predicted, truth)]) >= 0.8
    router = Router(classifier=classifier)
    ct = held_out[0]
    assert router.route("case_0001.npz", ct.imgs) == "3D"  # the name says nothing, the image does
    assert router.route("case_0001.npz") == "general"  # no image: the fallback
    assert router.route("2DBox_US_0001.npz", ct.imgs) == "US"  # the name wins when it says
    restored = Router.from_dict(router.to_dict())
    assert restored.route("case_0001.npz", ct.imgs) == "3D"


@lru_cache(maxsize=1)
def _small_base() -> torch.nn.Module:
    torch.manual_seed(0)
    return medsamlite.create_model("efficientvit_sam_l0", input_size=64)


def small_model() -> torch.nn.Module:
    return copy.deepcopy(_small_base())


def run(model, group: str | None = None) -> torch.Tensor:
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    box = torch.tensor([[4.0, 6.0, 40.0, 50.0]])
    with torch.no_grad():
        return (model(x, box) if group is None else model(x, box, group))[0]


def test_data_aware_model_routes_adapters_merges_and_round_trips(tmp_path) -> None:
    base_out = run(small_model())
    model = DataAwareModel.with_adapters(small_model(), Router(parse_groups("3D=CT,MR,PET;US")), "lora", r=2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.base.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    outs = {group: run(model, group) for group in ("3D", "US", "general")}
    assert not torch.allclose(outs["3D"], outs["US"])
    assert torch.equal(outs["general"], base_out)  # unknown modalities run the shared base
    assert torch.allclose(run(model.plain("US")), outs["US"], atol=1e-5, rtol=0)
    model.select("3D")
    trainable = [n for n, p in model.base.named_parameters() if p.requires_grad]
    assert trainable and all(".3D." in n for n in trainable)
    loaded = DataAwareModel.load(model.save(tmp_path / "daft"))
    assert loaded.router == model.router
    for group in ("3D", "US", "general"):
        assert torch.allclose(run(loaded, group), outs[group], atol=1e-6, rtol=0)


def test_whole_models_per_group() -> None:
    model = DataAwareModel.with_models(small_model(), Router(parse_groups("US")), "bitfit")
    assert model.method == "bitfit" and set(model.models) == {"US"}
    with torch.no_grad():
        model.models["US"].mask_decoder.iou_token.weight.add_(1.0)
    assert adapters.trainable_parameters(model.models["US"]) < adapters.trainable_parameters(small_model())
    assert torch.equal(run(model, "general"), run(small_model()))
    assert torch.equal(run(model.plain("US")), run(model, "US"))
    with pytest.raises(ValueError, match="peft method"):
        DataAwareModel.with_adapters(small_model(), Router(), "bitfit")


@pytest.fixture(scope="module")
def tiny_cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("daft_cases")
    return write_dataset(root, modalities=("CT", "US"), per_modality=3, size=0.12, depth=0.02)


def _finetune_config(out):
    from medsamlite.training.finetune import FinetuneConfig

    return FinetuneConfig(output_dir=str(out), epochs=1, max_steps=1, batch_size=1, lr=1e-2, device="cpu",
                          progress=False)


def test_train_daft_trains_one_adapter_per_group(tiny_cases, tmp_path) -> None:
    router = Router(parse_groups("3D=CT,MR,PET;US;XRay"))
    model, results = train_daft(small_model(), tiny_cases, router, DaftSettings("arena", {"r": 4, "lam": 1e-3}),
                                _finetune_config(tmp_path))
    assert results["XRay"] == {"cases": 0}
    for group in ("3D", "US"):
        assert results[group]["cases"] == 3 and results[group]["steps"] == 1
        assert (tmp_path / group / "best" / "adapter.safetensors").exists()
        trained = adapters.adapter_state_dict(model.base, group)
        assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in trained.items())
    untouched = adapters.adapter_state_dict(model.base, "XRay")
    assert all(v.abs().sum() == 0 for k, v in untouched.items() if "lora_B" in k)


def test_cli_trains_saves_and_exports_a_routed_set(tiny_cases, tmp_path) -> None:
    from medsamlite.cli import main

    out = tmp_path / "run"
    code = main(["train", "daft", str(tiny_cases[0].parent.parent), "--model", "efficientvit_sam_l0", "--input-size",
                              "64", "--groups", "US", "--rank", "2", "--max-steps", "1", "--epochs", "1",
                              "--batch-size", "1", "--device", "cpu", "--output", str(out)])
    assert code == 0
    model = DataAwareModel.load(out / "model")
    assert list(model.router.groups) == ["US"] and model.method == "lora"

    from medsamlite.runtime.routed import RoutedPredictor
    from medsamlite.runtime.npz import read_case

    exported = model.export(tmp_path / "compiled", backend="onnxruntime", cache_dir=tmp_path / "cache")
    routed = RoutedPredictor.open(exported)
    assert routed.loaded == []  # nothing is loaded before a case needs it
    us = next(p for p in tiny_cases if "_US_" in p.name)
    result = routed.predict_file(us, tmp_path / "segs" / us.name)
    assert routed.loaded == ["US"]
    segs = np.load(result.out_path)["segs"]
    reference = medsamlite.Predictor(model.plain("US")).predict_2d(read_case(us).imgs, read_case(us).boxes)
    assert segs.shape == reference.shape and (segs == reference).mean() > 0.999
    # `medsamlite predict --model DIR` recognises the data-aware export and routes each case, torch-free
    import subprocess
    import sys

    script = ("import sys; from medsamlite.cli import main; code = main(sys.argv[1:]); "
              "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, "predict", "-i", str(us), "-o", str(tmp_path / "cli"),
                           "--model", str(exported)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(tmp_path / "cli" / us.name)["segs"], segs)
    import json

    run = json.loads((tmp_path / "cli" / "run.json").read_text())
    assert (run["engine"], run["precision"], run["groups"]) == ("routed", "f32", {"US": ["US"]})
    assert run["served"] == {"US": {"backend": "onnxruntime", "precision": "f32", "threads": run["served"]["US"]["threads"]}}
