"""The prompts graph (issue 36): exported OpenVINO and ONNX Runtime folders take points and mask prompts.

Its logits against the torch model's `decode(..., points=, masks=)` at f32, for 1 and 3 points, with and without a
mask prompt; `Predictor.refine` on an exported folder against the torch model, without an encoder call; a folder
exported without the graph refusing clicks in one line.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cache_dir, golden_arrays, golden_case_for, max_rel_error, torch_model  # noqa: F401
from medsamlite.export import compile, export
from medsamlite.runtime import Predictor
from medsamlite.runtime.compiled import PROMPT_GRAPH, load
from medsamlite.runtime.engine import takes_clicks
from medsamlite.runtime.predictor import Click

CHEAP = "repvit_m0_6_medsam"
BACKENDS = ["onnxruntime", "openvino"]
TOL = 1e-4  # per box: max abs difference relative to the torch logits' max abs value, at f32 (as the factorised tests)
_FOLDERS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):  # noqa: F811
    """`exported(backend)`: the cheap model exported once per backend for this module."""
    def folder(backend: str) -> Path:
        if backend not in _FOLDERS:
            _FOLDERS[backend] = export(torch_model(CHEAP), tmp_path_factory.mktemp(f"prompts-{backend}") / "exported",
                                       backend=backend, cache_dir=cache_dir)
        return _FOLDERS[backend]

    return folder


def _prompts(p: int, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two boxes with p points each (labels positive, negative and, from 3 points, a padding point), S frame."""
    boxes = np.array([[0.1, 0.2, 0.6, 0.7], [0.3, 0.1, 0.9, 0.5]], np.float32) * side
    points = np.random.default_rng(p).random((2, p, 2)).astype(np.float32) * side
    labels = np.array([[1, 0, 1, 0][:p], [0, 1, -1, 1][:p]], np.int64)
    return boxes, points, labels


def _torch_decode(embedding: np.ndarray, boxes: np.ndarray, points: np.ndarray, labels: np.ndarray,
                  masks: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    model = torch_model(CHEAP).eval()
    with torch.no_grad():
        logits, iou = model.decode(torch.from_numpy(embedding), torch.from_numpy(boxes),
                                   points=(torch.from_numpy(points), torch.from_numpy(labels)),
                                   masks=None if masks is None else torch.from_numpy(masks))
    return logits.numpy(), iou.numpy()


@pytest.mark.parametrize("with_mask", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("p", [1, 3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_prompts_graph_logits_equal_torch_at_f32(backend: str, p: int, with_mask: bool, exported) -> None:
    model = torch_model(CHEAP).eval()
    embedding = golden_arrays(golden_case_for(CHEAP))["image_embedding"]
    boxes, points, labels = _prompts(p, model.config.box_frame)
    masks = None
    if with_mask:  # the previous low-res logits, as refine sends them
        with torch.no_grad():
            masks = model.decode(torch.from_numpy(embedding), torch.from_numpy(boxes))[0].numpy()
    expected, expected_iou = _torch_decode(embedding, boxes, points, labels, masks)
    with load(exported(backend)) as engine:
        assert takes_clicks(engine) and engine.clicks_refused is None
        logits, iou = engine.decode(embedding, boxes, points=points, labels=labels, masks=masks)
        assert engine.opened() == ["encoder", PROMPT_GRAPH]  # the box-only graphs never opened
    assert logits.shape == expected.shape == (2, 1, 256, 256) and iou.shape == (2, 1)
    errors = [max_rel_error(logits[i], expected[i]) for i in range(len(boxes))]
    print(f"prompts graph {backend} P={p} mask={with_mask}: max rel error {max(errors):.3g}, "
          f"iou max abs error {np.abs(iou - expected_iou).max():.3g}")
    assert max(errors) <= TOL, f"{backend} P={p} mask={with_mask}: logits differ by {errors} of max |torch|"
    np.testing.assert_allclose(iou, expected_iou, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_point_count_is_dynamic_and_a_box_alone_stays_on_the_dense_graph(backend: str, exported) -> None:
    folder = exported(backend)
    meta = json.loads((folder / "config.json").read_text())
    assert meta[PROMPT_GRAPH] is True and PROMPT_GRAPH in meta["files"]
    if backend == "openvino":
        from medsamlite.runtime.openvino import shared_core

        graph = shared_core().read_model(str(folder / meta["files"][PROMPT_GRAPH]))
        shapes = {i.get_any_name(): i.get_partial_shape() for i in graph.inputs}
        assert shapes["points"].is_dynamic and shapes["points"][1].is_dynamic and shapes["points"][2] == 2
        assert shapes["embedding"].is_static
    else:
        import onnxruntime as ort

        inputs = {i.name: i.shape for i in ort.InferenceSession(str(folder / meta["files"][PROMPT_GRAPH]),
                                                                providers=["CPUExecutionProvider"]).get_inputs()}
        assert isinstance(inputs["points"][1], str) and inputs["points"][::2] == [1, 2]
    embedding = golden_arrays(golden_case_for(CHEAP))["image_embedding"]
    boxes = np.array([[20, 30, 120, 140]], np.float32)
    with load(folder) as engine:
        box_only = engine.decode(embedding, boxes)[0]
        assert engine.opened() == ["encoder", "decoder"]
        for p in (1, 2, 5):  # one graph, any number of points: each call's shape
            points = np.tile(np.array([[[60, 70]]], np.float32), (1, p, 1))
            logits = engine.decode(embedding, boxes, points=points, labels=np.ones((1, p), np.int64))[0]
            assert logits.shape == (1, 1, 256, 256) and not np.array_equal(logits, box_only)
        empty = engine.decode(embedding, boxes, points=np.zeros((1, 0, 2), np.float32), labels=np.zeros((1, 0)))[0]
        np.testing.assert_array_equal(empty, box_only)  # no points: the box alone, on the dense graph


def _case() -> tuple[np.ndarray, np.ndarray, list[list[Click]]]:
    """An image with two darker blocks, a box on each, and two rounds of clicks."""
    rng = np.random.default_rng(7)
    image = rng.integers(120, 255, (180, 220, 3), dtype=np.uint8)
    image[30:110, 40:120] //= 3
    image[90:160, 130:200] //= 4
    boxes = np.array([[35, 25, 125, 115], [125, 85, 205, 165]])
    rounds = [[Click(1, 100, 100, positive=False), Click(2, 120, 80)], [Click(1, 140, 60)]]
    return image, boxes, rounds


@pytest.mark.parametrize("backend", BACKENDS)
def test_refine_on_an_exported_folder_gives_the_torch_label_maps_without_encoding(backend: str, exported) -> None:
    image, boxes, rounds = _case()
    torch_predictor = Predictor(torch_model(CHEAP))
    expected = [torch_predictor.start(image, boxes)]
    for clicks in rounds:
        expected.append(torch_predictor.refine(expected[-1], clicks))
    with load(exported(backend), decoder="auto") as engine:
        predictor = Predictor(engine)
        states = [predictor.start(image, boxes)]
        assert PROMPT_GRAPH not in engine.opened()  # opened on the first click, not before
        encode, calls = engine.encode, []
        engine.encode = lambda images: calls.append(len(images)) or encode(images)
        for clicks in rounds:
            states.append(predictor.refine(states[-1], clicks))
        assert calls == [] and PROMPT_GRAPH in engine.opened()
    for round_, (state, want) in enumerate(zip(states, expected)):
        agreement = float((state.segs == want.segs).mean())
        print(f"refine {backend} round {round_}: label agreement with torch {agreement:.6f}")
        assert state.segs.shape == want.segs.shape and agreement >= 0.999, (round_, agreement)
    assert not np.array_equal(states[1].logits[1, 0], states[0].logits[1, 0])  # the clicks were decoded


def test_a_folder_without_the_prompts_graph_refuses_clicks_in_one_line(exported, tmp_path: Path,
                                                                       cache_dir: Path) -> None:  # noqa: F811
    old = tmp_path / "old"
    shutil.copytree(exported("onnxruntime"), old)
    meta = json.loads((old / "config.json").read_text())  # as a folder exported before issue 36
    del meta[PROMPT_GRAPH]
    (old / meta["files"].pop(PROMPT_GRAPH)).unlink()
    meta["digests"] = {k: v for k, v in meta["digests"].items() if Path(k).stem != PROMPT_GRAPH}
    (old / "config.json").write_text(json.dumps(meta))
    image, boxes, _ = _case()
    with load(old) as engine:
        assert not takes_clicks(engine)
        predictor = Predictor(engine)
        assert predictor.predict_2d(image, boxes).shape == image.shape[:2]  # boxes still work
        with pytest.raises(TypeError) as error:
            predictor.start(image, boxes)
        text = str(error.value)
        assert "\n" not in text and str(old) in text and "prompts graph" in text and "export it again" in text
        embedding = np.zeros((1, *engine.config.embedding_shape), np.float32)
        with pytest.raises(RuntimeError, match="holds no prompts graph"):
            engine.decode(embedding, boxes[:1], points=np.zeros((1, 1, 2)), labels=np.ones((1, 1)))
    # a compile for predict does not trace it; asked for, it does (the export's traced graphs, from the cache)
    with compile(torch_model(CHEAP), "onnxruntime", cache_dir=cache_dir) as plain:
        assert PROMPT_GRAPH not in plain.meta["files"] and not takes_clicks(plain)
    with compile(torch_model(CHEAP), "onnxruntime", cache_dir=cache_dir, decoder="auto", prompts=True) as full:
        assert PROMPT_GRAPH in full.meta["files"] and takes_clicks(full)
        embedding = np.zeros((1, *full.config.embedding_shape), np.float32)
        for kwargs, match in [({"points": np.zeros((1, 1, 2))}, "labels of shape None"),
                              ({"points": np.zeros((2, 1, 2)), "labels": np.ones((2, 1))}, r"for 1 boxes"),
                              ({"masks": np.zeros((1, 1, 256, 256))}, "needs at least one point"),
                              ({"points": np.zeros((1, 1, 2)), "labels": np.ones((1, 1)),
                                "masks": np.zeros((1, 1, 64, 64))}, r"mask prompt of shape \(1, 1, 64, 64\)")]:
            with pytest.raises(ValueError, match=match) as error:
                full.decode(embedding, boxes[:1], **kwargs)
            assert "\n" not in str(error.value)
        with pytest.raises(ValueError, match="with a box each"):
            full.decode(embedding, None, points=np.zeros((1, 1, 2)), labels=np.ones((1, 1)))


def test_a_damaged_prompts_graph_is_caught_when_the_first_click_opens_it(exported, tmp_path: Path) -> None:
    from medsamlite.runtime.files import IntegrityError

    folder = tmp_path / "damaged"
    shutil.copytree(exported("onnxruntime"), folder)
    graph = folder / "prompts.onnx"
    size = graph.stat().st_size
    with open(graph, "r+b") as f:  # the middle overwritten, the size unchanged
        f.seek(size // 4)
        f.write(np.random.default_rng(0).integers(0, 256, size // 2, dtype=np.uint8).tobytes())
    embedding = golden_arrays(golden_case_for(CHEAP))["image_embedding"]
    box = np.array([[20, 30, 120, 140]], np.float32)
    with load(folder) as engine:  # load and boxes never read it
        engine.decode(embedding, box)
        with pytest.raises(IntegrityError, match="prompts.onnx") as error:
            engine.decode(embedding, box, points=np.array([[[60, 70]]], np.float32), labels=np.ones((1, 1)))
        assert "\n" not in str(error.value)


def test_predict_clicks_on_an_exported_folder_runs_its_runtime(exported, tmp_path: Path) -> None:
    from medsamlite.cli import main

    image, boxes, rounds = _case()
    cases = tmp_path / "cases"
    cases.mkdir()
    np.savez(cases / "2DBox_US_0001.npz", imgs=image, boxes=boxes)
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps({"2DBox_US_0001.npz": [[{"label": c.label, "point": [c.x, c.y],
                                                          "positive": c.positive} for c in r] for r in rounds]}))
    folder = exported("onnxruntime")
    assert main(["predict", "-i", str(cases), "-o", str(tmp_path / "out"), "--model", str(folder),
                 "--clicks", str(clicks)]) == 0
    assert json.loads((tmp_path / "out" / "run.json").read_text())["engine"] == "onnxruntime"
    with load(folder) as engine:
        predictor = Predictor(engine)
        state = predictor.start(image, boxes)
        for r in rounds:
            state = predictor.refine(state, r)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "2DBox_US_0001.npz")["segs"], state.segs)
