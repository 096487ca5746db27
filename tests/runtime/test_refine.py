"""`Predictor.start` / `refine`: clicks and the previous logits as prompts, the cached embeddings, 3D re-propagation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import golden_arrays, torch_model
from fakes import BoxEngine
from medsamlite.config import ModelConfig
from medsamlite.runtime import Predictor
from medsamlite.runtime.predictor import Click


class ClickEngine(BoxEngine):
    """BoxEngine that also takes clicks: a disc of radius 8 (S frame) around each point, + for positive, - for negative.

    A mask prompt is added at a tenth of its value, so the stored logits must come back in the next call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.config = ModelConfig(name="clicks", encoder="none", input_size=256)
        self.prompts = []

    def decode(self, embeddings, boxes, points=None, labels=None, masks=None):
        low, iou = super().decode(embeddings, boxes)
        self.prompts.append({"points": points, "labels": labels, "masks": masks})
        yy, xx = np.mgrid[:256, :256]
        for i in range(len(low)):
            for (x, y), label in zip(points[i] if points is not None else (), labels[i] if labels is not None else ()):
                low[i, 0][(xx - x) ** 2 + (yy - y) ** 2 <= 64] = 5.0 if label == 1 else -5.0
            if masks is not None:
                low[i, 0] += 0.1 * masks[i, 0]
        return low, iou


def test_a_refine_click_costs_no_encoder_call_and_edits_the_clicked_object():
    engine = ClickEngine()
    predictor = Predictor(engine)
    image = np.random.default_rng(0).integers(0, 255, (100, 200), np.uint8)
    first = predictor.start(image, np.array([[10, 10, 60, 60], [100, 20, 180, 90]]))
    np.testing.assert_array_equal(first.segs, predictor.predict_2d(image, np.array([[10, 10, 60, 60],
                                                                                  [100, 20, 180, 90]])))
    encodes, before = engine.encode_calls, first.segs.copy()
    second = predictor.refine(first, [Click(1, 80, 40), Click(2, 140, 50, positive=False)])
    assert engine.encode_calls == encodes  # the cached embedding serves every click
    assert second.segs[40, 80] == 1 and before[40, 80] == 0  # a positive click adds
    assert second.segs[50, 140] == 0 and before[50, 140] == 2  # a negative click removes
    np.testing.assert_array_equal(first.segs, before)  # the previous result is kept as it was
    third = predictor.refine(second, [Click(1, 30, 30, positive=False)])
    assert engine.encode_calls == encodes
    sent = engine.prompts[-1]
    assert sent["points"].shape == (1, 2, 2) and sent["labels"].tolist() == [[1, 0]]  # clicks accumulate
    np.testing.assert_array_equal(sent["masks"][0], second.logits[1, 0])  # the previous logits are fed back
    assert third.segs[30, 30] == 0 and third.segs[40, 80] == 1


def test_3d_click_redecodes_its_slice_and_repropagates_away_from_the_middle():
    engine = ClickEngine()
    predictor = Predictor(engine)
    volume = np.random.default_rng(1).integers(0, 255, (9, 64, 64), np.uint8)
    boxes = np.array([[10, 10, 1, 40, 40, 7]])  # middle slice 4
    first = predictor.start(volume, boxes)
    np.testing.assert_array_equal(first.segs, predictor.predict_3d(volume, boxes))
    encodes, calls = engine.encode_calls, len(engine.decode_calls)
    second = predictor.refine(first, [Click(1, 55, 55, z=5)])
    assert engine.encode_calls == encodes
    assert len(engine.decode_calls) - calls == 3  # slices 5, 6, 7: the clicked one and those it propagates to
    assert second.segs[5, 55, 55] == 1 and first.segs[5, 55, 55] == 0
    assert (second.segs[6, 40:50, 40:50] == 1).any()  # the next slice's box grew with the click
    np.testing.assert_array_equal(second.segs[:5], first.segs[:5])  # the middle and the walk down are untouched


def test_bad_clicks_and_box_only_engines_are_one_line_errors():
    predictor = Predictor(ClickEngine())
    state = predictor.start(np.zeros((9, 64, 64), np.uint8), np.array([[10, 10, 1, 40, 40, 7]]))
    for click, match in [(Click(2, 5, 5, z=3), r"label 2; expected 1\.\.1"),
                         (Click(1, 64, 5, z=3), "outside the image of 64 x 64"),
                         (Click(1, 5, 5, z=8), "slice 8 outside label 1's box, slices 1..7")]:
        with pytest.raises(ValueError, match=match):
            predictor.refine(state, [click])
    with pytest.raises(TypeError, match="decodes boxes only"):
        Predictor(BoxEngine()).start(np.zeros((64, 64), np.uint8), np.array([[1, 1, 30, 30]]))


def test_torch_model_start_equals_the_reference_and_refine_never_encodes(kind="2d"):
    """The reference pipeline's 2D case (its 3D propagation is the fake engine's test above: the same `_prompt`)."""
    model = torch_model("litemedsam").eval()
    arrays = golden_arrays("litemedsam", "pipeline.npz")
    image, boxes = arrays[f"case{kind}_imgs"], arrays[f"case{kind}_boxes"]
    predictor = Predictor(model)
    state = predictor.start(image, boxes)
    np.testing.assert_array_equal(state.segs, arrays[f"case{kind}_segs"])
    calls = []
    hook = model.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        z = int(boxes[0][2] + boxes[0][5]) // 2 if kind == "3d" else 0
        click = Click(1, float(boxes[0][0]) + 3, float(boxes[0][1]) + 3, positive=False, z=z)
        refined = predictor.refine(state, [click])
    finally:
        hook.remove()
    assert not calls and refined.segs.shape == state.segs.shape
    assert refined.logits[1, z].shape == (1, 256, 256) and not np.array_equal(refined.logits[1, z], state.logits[1, z])


def test_predict_file_applies_rounds_of_clicks(tmp_path):
    from medsamlite.runtime.npz import read_case

    image = np.random.default_rng(2).integers(0, 255, (80, 120), np.uint8)
    np.savez(tmp_path / "2DBox_US_0001.npz", imgs=image, boxes=np.array([[10, 10, 50, 50]]))
    predictor = Predictor(ClickEngine())
    rounds = [[Click(1, 70, 30)], [Click(1, 20, 20, positive=False)]]
    predictor.predict_file(tmp_path / "2DBox_US_0001.npz", tmp_path / "out.npz", clicks=rounds)
    segs = np.load(tmp_path / "out.npz")["segs"]
    state = predictor.start(read_case(tmp_path / "2DBox_US_0001.npz").imgs, np.array([[10, 10, 50, 50]]))
    expected = predictor.refine(predictor.refine(state, rounds[0]), rounds[1]).segs
    np.testing.assert_array_equal(segs, expected)
    assert segs[30, 70] == 1 and segs[20, 20] == 0


def test_clicks_json_is_read_and_bad_entries_are_one_line_errors(tmp_path):
    import json

    from medsamlite.runtime.npz import CaseError
    from medsamlite.runtime.predictor import read_clicks

    path = tmp_path / "clicks.json"
    path.write_text(json.dumps({"a.npz": [[{"label": 1, "point": [3, 4]}],
                                          [{"label": 2, "point": [1.5, 2, 7], "positive": False}]]}))
    assert read_clicks(path) == {"a.npz": [[Click(1, 3.0, 4.0)], [Click(2, 1.5, 2.0, False, 7)]]}
    for bad, key in [({"a.npz": {"label": 1}}, "a.npz is dict"), ({"a.npz": [[{"label": 1, "point": [3]}]]},
                                                                    r"a.npz\[0\]\[0\] is"),
                     ({"a.npz": [[{"label": "1", "point": [3, 4]}]]}, r"a.npz\[0\]\[0\] is")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(CaseError, match=f"{path}: {key}"):
            read_clicks(path)


def test_predict_cli_takes_clicks_json(tmp_path):
    import json

    from medsamlite.cli import main
    from medsamlite.data.synthetic import make_case, write_case

    case = make_case("US", 0, size=0.15)
    image_file, _ = write_case(case, tmp_path / "data")
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps({image_file.name: [[{"label": 1, "point": [5, 5], "positive": True}]]}))
    out = tmp_path / "out"
    assert main(["predict", "-i", str(image_file), "-o", str(out), "--clicks", str(clicks)]) == 0
    assert np.load(out / image_file.name)["segs"].shape == case.gts.shape
    assert json.loads((out / "run.json").read_text())["engine"] == "torch"  # compiled graphs take boxes only
    clicks.write_text("[1]")
    assert main(["predict", "-i", str(image_file), "-o", str(tmp_path / "bad"), "--clicks", str(clicks)]) == 1
    assert not (tmp_path / "bad").exists()
