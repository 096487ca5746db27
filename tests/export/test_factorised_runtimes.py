"""The factorised decoder on OpenVINO and ONNX Runtime: every registry model against the same runtime's dense decoder."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cache_dir, golden_arrays, golden_case_for, max_rel_error, torch_model  # noqa: F401
from medsamlite import list_models
from medsamlite.constants import DECODERS
from medsamlite.export import compile, export
from medsamlite.export.compile import FACTORISED_BOXES
from medsamlite.runtime import Predictor
from medsamlite.runtime.compiled import load
from medsamlite.runtime.decoders import DEFAULT_FACTORISED_FROM

TOL = 1e-4  # per box: max abs difference relative to the dense logits' max abs value, at f32
BACKENDS = ["onnxruntime", "openvino"]


def _boxes(size: int, n: int, seed: int = 0) -> np.ndarray:
    """n boxes of every size, some touching the border, in the S frame."""
    rng = np.random.default_rng(seed)
    corner = rng.random((n, 2)) * size * 0.8
    extent = rng.random((n, 2)) * size * 0.5 + 1
    return np.concatenate([corner, corner + extent], 1).clip(max=size - 1).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list_models())
def test_factorised_logits_equal_dense_on_the_golden_embedding(name: str, backend: str, cache_dir: Path) -> None:
    model = torch_model(name)
    arrays = golden_arrays(golden_case_for(name))
    scale = model.config.input_size / 256  # the golden boxes are in a 256 frame
    # 3 + 14 boxes: two full static batches and a padded one
    boxes = np.concatenate([arrays["boxes3"] * scale, _boxes(model.config.input_size, 14)]).astype(np.float32)
    with compile(model, backend, cache_dir=cache_dir, decoders=DECODERS) as dense, \
            compile(model, backend, cache_dir=cache_dir, decoder="factorised", decoders=DECODERS) as factorised:
        assert factorised.path == dense.path  # one entry holds both decoders, as an export does
        expected, expected_iou = dense.decode(arrays["image_embedding"], boxes)
        logits, iou = factorised.decode(arrays["image_embedding"], boxes)
    assert logits.shape == expected.shape and iou.shape == expected_iou.shape
    for i in range(len(boxes)):
        err = max_rel_error(logits[i], expected[i])
        assert err <= TOL, f"{name} on {backend} box {i}: factorised logits differ by {err:.2e} of max |dense|"
    np.testing.assert_allclose(iou, expected_iou, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_prepared_tensors_are_recorded_and_serve_any_number_of_boxes(backend: str, cache_dir: Path) -> None:
    model = torch_model("litemedsam")
    embedding = golden_arrays("litemedsam")["image_embedding"]
    engine = compile(model, backend, cache_dir=cache_dir, decoder="factorised", decoders=DECODERS)
    with torch.no_grad():
        expected = model.prepare(torch.from_numpy(embedding))
    meta = engine.meta
    assert meta["decoders"] == ["dense", "factorised"] and meta["factorised_boxes"] == FACTORISED_BOXES
    assert meta["prepared"] == [[k, list(v.shape)] for k, v in expected.items()]
    prepared = engine.prepare(embedding)
    assert list(prepared) == list(expected)
    for key, value in expected.items():
        assert max_rel_error(prepared[key], value.numpy()) <= 1e-5, key
    boxes = _boxes(256, FACTORISED_BOXES + 3, seed=2)
    together, _ = engine.decode_prepared(prepared, boxes)
    one, _ = engine.decode_prepared(prepared, boxes[4:5])  # a batch of one, padded
    np.testing.assert_allclose(one[0], together[4], atol=1e-4)
    empty, empty_iou = engine.decode_prepared(prepared, np.zeros((0, 4), np.float32))
    assert empty.shape == (0, 1, 256, 256) and empty_iou.shape == (0, 1)
    engine.close()


def test_a_dense_engine_refuses_prepare_and_an_old_folder_refuses_factorised(cache_dir: Path, tmp_path: Path) -> None:
    path = compile(torch_model("repvit_m0_6_medsam"), "onnxruntime", cache_dir=cache_dir).path
    with load(path) as dense:
        with pytest.raises(RuntimeError, match="decoder='factorised'"):
            dense.prepare(np.zeros((1, *dense.config.embedding_shape), np.float32))
        with pytest.raises(ValueError, match="runs decoder 'dense', not 'factorised'"):
            Predictor(dense, decoder="factorised")
    old = tmp_path / "old"
    shutil.copytree(path, old)
    meta = json.loads((old / "config.json").read_text())
    for key in ("decoders", "prepared", "factorised_boxes"):
        del meta[key]
    (old / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"holds the decoders \['dense'\], not 'factorised'"):
        load(old, decoder="factorised")
    with pytest.raises(ValueError, match="expected one of auto, dense, factorised"):
        load(old, decoder="sparse")
    load(old).close()  # dense still opens


def test_an_entry_holds_the_decoder_it_is_compiled_for(cache_dir: Path) -> None:
    model = torch_model("repvit_m0_6_medsam")
    graphs = {}
    for decoder in ("dense", "factorised", None):
        engine = compile(model, "onnxruntime", cache_dir=cache_dir, decoder=decoder)
        graphs[decoder] = sorted(Path(f).stem for f in engine.meta["files"].values())
        assert engine.meta["decoders"] == ([decoder] if decoder else [])
        embedding = engine.encode(np.zeros((1, 3, 256, 256), np.float32))
        if decoder is None:
            with pytest.raises(RuntimeError, match="decoder=None"):
                engine.decode(embedding, np.array([[10, 10, 50, 50]], np.float32))
            with pytest.raises(ValueError, match=r"holds the decoders \[\], not 'dense'"):
                load(engine.path)
        engine.close()
    assert graphs == {"dense": ["decoder", "encoder"], "factorised": ["encoder", "factorised", "prepare"],
                      None: ["encoder"]}
    with pytest.raises(ValueError, match="holding the decoder run"):
        compile(model, "onnxruntime", cache_dir=cache_dir, decoder="factorised", decoders=["dense"])


def _case(n: int) -> tuple[np.ndarray, np.ndarray]:
    """An image with a darker block and n boxes over it, in the image's pixels."""
    rng = np.random.default_rng(n)
    image = rng.integers(0, 255, (96, 120, 3), dtype=np.uint8)
    image[20:70, 30:100] //= 3
    corner = rng.integers(0, 60, (n, 2))
    return image, np.concatenate([corner, corner + rng.integers(10, 40, (n, 2))], axis=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_auto_opens_the_factorised_graphs_on_first_use_and_gives_dense_label_maps(backend: str, cache_dir: Path,
                                                                                   tmp_path: Path) -> None:
    folder = export(torch_model("repvit_m0_6_medsam"), tmp_path / "exported", backend=backend, cache_dir=cache_dir)
    one, many = _case(1), _case(12)
    with load(folder, decoder="dense") as dense:
        expected = [Predictor(dense).predict_2d(*case) for case in (one, many)]
        assert dense.opened() == ["encoder", "decoder"]
    with load(folder, decoder="auto") as auto:
        predictor = Predictor(auto)
        np.testing.assert_array_equal(predictor.predict_2d(*one), expected[0])
        assert auto.opened() == ["encoder", "decoder"]  # one box: the factorised graphs never opened
        np.testing.assert_array_equal(predictor.predict_2d(*many), expected[1])
        assert auto.opened() == ["encoder", "decoder", "prepare", "factorised"]
        assert predictor.decoded == {"dense": 1, "factorised": 1} and auto.factorised_from == DEFAULT_FACTORISED_FROM
    assert expected[1].any()


def test_a_threshold_measured_into_an_exported_folder_is_what_load_runs(cache_dir: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`measure_folder` records what `measure_threshold` returns (a fake here: timing is the lead's to run);
    the folder stays sound and `load` picks by it."""
    from medsamlite.runtime import decoders

    folder = export(torch_model("repvit_m0_6_medsam"), tmp_path / "exported", backend="onnxruntime",
                    cache_dir=cache_dir)
    measured = []
    monkeypatch.setattr(decoders, "measure_threshold", lambda engine: measured.append(engine.decoders) or 2)
    assert decoders.measure_folder(folder) == 2 and measured == [["dense", "factorised"]]
    with load(folder, decoder="auto") as engine:
        assert engine.factorised_from == 2
        assert (engine.decoder_for(1), engine.decoder_for(2)) == ("dense", "factorised")
    dense_only = compile(torch_model("repvit_m0_6_medsam"), "onnxruntime", cache_dir=cache_dir).path
    with pytest.raises(ValueError, match=r"holds the decoders \['dense'\]; measuring the threshold needs both"):
        decoders.measure_folder(dense_only)
    with load(dense_only, decoder="auto") as engine:  # an entry holding one decoder: auto runs it
        assert engine.decoders == ["dense"] and engine.decoder_for(100) == "dense"


def test_export_measure_decoders_records_the_threshold(cache_dir: Path, tmp_path: Path, capsys,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`medsamlite export --measure-decoders` (the timing itself faked: it is the lead's to run on an idle CPU)."""
    import argparse

    from medsamlite.cli import export as cli
    from medsamlite.runtime import decoders
    from medsamlite.runtime.precision import cpu_name

    checkpoint = tmp_path / "weights.pth"
    torch.save(torch_model("repvit_m0_6_medsam").state_dict(), checkpoint)
    monkeypatch.setattr(decoders, "measure_threshold", lambda engine: 3)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--model", "repvit_m0_6_medsam", "--checkpoint", str(checkpoint), "--backend",
                              "onnxruntime", "--cache-dir", str(cache_dir), "--measure-decoders", "-o",
                              str(tmp_path / "out")])
    assert cli.run(args) == 0
    assert "the factorised decoder from 3 boxes per image on this CPU" in capsys.readouterr().out
    meta = json.loads((tmp_path / "out" / "config.json").read_text())
    assert meta["factorised_from"] == {cpu_name(): {"f32": 3}}
    with load(tmp_path / "out", decoder="auto") as engine:
        assert engine.factorised_from == 3
