"""Partial labels: class outputs (learned class prompts beside the box), the masked loss through the one loop (a class
a source does not annotate gets exactly zero gradient from it), model folders that keep num_classes, and the CLI
from `train finetune --num-classes --annotated` to `predict --classes`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from medsamlite.checkpoints import save_model
from medsamlite.constants import CONFIG_FILE
from medsamlite.data.datasets import NpzSliceDataset, case_files
from medsamlite.factory import build_model, load_model, with_classes
from medsamlite.training.finetune import FinetuneConfig, FinetuneTask, finetune
from medsamlite.training.losses import get_loss
import tiny
from tiny import registered_tiny  # noqa: F401 (autouse: the tiny encoder registered)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
C = 3
# Endoscopy cases' source labels classes 1 and 2 only; Dermoscopy's (no match) labels every class
ANNOTATED = {"2DBox_Endoscopy_*": [1, 2]}


case_dir = tiny.cases_fixture(6)


def class_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(tiny.CONFIG.replace(num_classes=C))


def test_class_outputs_decode_and_their_folder_round_trips(tmp_path):
    model = class_model().eval()
    emb = model.encode(torch.rand(2, 3, 64, 64))
    boxes = torch.tensor([[5.0, 5, 40, 40], [10, 10, 50, 30]])
    logits, iou = model.decode_classes(emb, boxes)
    assert logits.shape == (2, C, 64, 64) and iou.shape == (2, C)
    factorised, _ = model.decode_classes(emb[:1], boxes[:1], decoder="factorised")
    torch.testing.assert_close(factorised, logits[:1], rtol=0, atol=1e-5)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config.num_classes == C
    torch.testing.assert_close(loaded.decode_classes(emb, boxes)[0], logits)
    # a folder written before class outputs existed (no num_classes in its config) still loads, box-only
    box_only = build_model(tiny.CONFIG)
    save_model(box_only, tmp_path / "old")
    meta = json.loads((tmp_path / "old" / CONFIG_FILE).read_text())
    del meta["config"]["num_classes"]
    (tmp_path / "old" / CONFIG_FILE).write_text(json.dumps(meta))
    old = load_model(tmp_path / "old")
    assert old.config.num_classes == 0 and old.class_prompts is None
    with pytest.raises(ValueError, match="no class outputs"):
        old.decode_classes(emb, boxes)
    added = with_classes(old, C)
    assert added.image_encoder is old.image_encoder and added.class_prompts.tokens.weight.shape == (C, tiny.DIM)
    with pytest.raises(ValueError, match="has 3 class outputs; expected 2"):
        with_classes(added, 2)


def source_batch(case_dir: Path, modality: str) -> dict:
    """One item of a case from `modality`'s source, as a batch."""
    data = NpzSliceDataset(case_files(case_dir), tiny.CONFIG, augment=False, num_classes=C,
                           annotated_classes=ANNOTATED, targets_per_image=2)
    index = next(i for i, m in enumerate(data.modalities) if m == modality)
    return default_collate([data[index]])


def class_gradient(case_dir: Path, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(annotated flags, gradient of the class-prompt tokens) of one training step on a batch from `modality`."""
    model = class_model()
    task = FinetuneTask(model, get_loss("partial_bce_dice"))
    task.train_mode()
    batch = source_batch(case_dir, modality)
    loss, _, _ = task.step(task.module(), batch)
    loss.backward()
    return batch["annotated"][0], model.class_prompts.tokens.weight.grad


def test_a_class_a_source_does_not_annotate_gets_exactly_zero_gradient_from_it(case_dir):
    annotated, grad = class_gradient(case_dir, "Endoscopy")
    assert annotated.tolist() == [True, True, False]
    assert torch.all(grad[2] == 0)  # exactly zero: class 3 is unknown in this source, not background
    assert torch.all(grad[:2].abs().sum(1) > 0)
    annotated, grad = class_gradient(case_dir, "Dermoscopy")
    assert annotated.tolist() == [True, True, True]
    assert torch.all(grad.abs().sum(1) > 0)  # the same class from a source that annotates it does learn


def test_partial_label_finetune_trains_validates_and_saves_class_outputs(tmp_path, case_dir):
    data = NpzSliceDataset(case_files(case_dir), tiny.CONFIG, augment=False, num_classes=C,
                           annotated_classes=ANNOTATED)
    config = FinetuneConfig(output_dir=str(tmp_path), loss="partial_bce_dice", max_steps=2, batch_size=2, lr=1e-3,
                            progress=False)
    result = finetune(class_model(), data, data, config)
    assert result.steps == 2 and np.isfinite(result.best_val_loss) and 0 <= result.history[-1]["val_dsc"] <= 1
    assert load_model(tmp_path / "model").config.num_classes == C
    with pytest.raises(ValueError, match="has none \\(num_classes 0\\)"):
        FinetuneTask(build_model(tiny.CONFIG), get_loss("partial_bce"))


def test_cli_partial_label_finetune_then_predict_classes(tmp_path, case_dir, capsys):
    from medsamlite.cli import main

    save_model(build_model(tiny.CONFIG), tmp_path / "tiny")
    (tmp_path / "annotated.json").write_text(json.dumps(ANNOTATED))
    assert main(["train", "finetune", str(case_dir), "--model", str(tmp_path / "tiny"), "--output",
                 str(tmp_path / "ft"), "--num-classes", str(C), "--annotated", str(tmp_path / "annotated.json"),
                 "--max-steps", "2", "--batch-size", "2", "--targets-per-image", "2", "--no-progress"]) == 0
    assert "2 steps" in capsys.readouterr().out
    run = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert run["config"]["loss"] == "partial_bce_dice"
    cases = tmp_path / "cases"
    cases.mkdir()
    for src in sorted((case_dir / "imgs").glob("*.npz"))[:2]:  # boxes from the labels, as a user's cases have
        gts = np.load(case_dir / "gts" / src.name)["gts"]
        boxes = [[xs.min(), ys.min(), xs.max(), ys.max()] for ys, xs in
                 (np.nonzero(gts == label) for label in np.unique(gts[gts > 0]))]
        np.savez(cases / src.name, imgs=np.load(src)["imgs"], boxes=np.array(boxes))
    assert main(["predict", "-i", str(cases), "-o", str(tmp_path / "segs"), "--model", str(tmp_path / "ft" / "model"),
                 "--classes"]) == 0
    for out in sorted((tmp_path / "segs").glob("*.npz")):
        with np.load(out) as f:
            assert f["classes"].shape == (C, 64, 64) and f["classes"].dtype == np.uint8
            assert f["segs"].shape == (64, 64)
    assert main(["predict", "-i", str(cases), "-o", str(tmp_path / "none"), "--model", str(tmp_path / "tiny"),
                 "--classes"]) == 1
    assert "has no class outputs" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="expected 1..3"):
        main(["train", "finetune", str(case_dir), "--model", str(tmp_path / "tiny"), "--num-classes", str(C),
              "--annotated", "2DBox_*=4", "--output", str(tmp_path / "bad")])


def test_predict_classes_in_3d_decodes_each_slice_of_a_box_and_nothing_outside():
    from medsamlite.runtime import Predictor

    volume = np.random.default_rng(0).integers(0, 255, (3, 64, 64)).astype(np.uint8)
    predictor = Predictor(class_model().eval())
    maps = predictor.predict_classes(volume, np.array([[8, 8, 0, 40, 40, 1]]))
    assert maps.shape == (C, 3, 64, 64) and maps.dtype == np.uint8
    assert not maps[:, 2].any()  # slice 2 lies outside the box's z range
    assert predictor.predict_classes(volume[0], np.array([[8, 8, 40, 40]])).shape == (C, 64, 64)
    with pytest.raises(TypeError, match="has no class outputs"):
        Predictor(build_model(tiny.CONFIG).eval()).predict_classes(volume[0], np.array([[8, 8, 40, 40]]))


def test_bad_annotated_ids_fail_when_the_data_set_is_made_not_at_its_first_item(case_dir):
    with pytest.raises(ValueError, match=r"annotated_classes\['US'\] has classes \[4\]; expected 1..3"):
        NpzSliceDataset(case_files(case_dir), tiny.CONFIG, num_classes=C, annotated_classes={"US": [1, 4]})
    with pytest.raises(ValueError, match="annotated_classes needs num_classes"):
        NpzSliceDataset(case_files(case_dir), tiny.CONFIG, annotated_classes={"US": [1]})


def test_exporting_a_class_model_warns_that_its_class_outputs_stay_behind(tmp_path):
    from medsamlite.export import export

    with pytest.warns(UserWarning, match="its 3 class outputs are not exported"):
        folder = export(class_model().eval(), tmp_path / "exported", backend="onnxruntime", cache_dir=tmp_path / "c")
    assert (folder / "encoder.onnx").exists()


def test_annotated_classes_by_case_glob_modality_or_json_file(tmp_path):
    from medsamlite.cli.train import _annotated
    from medsamlite.data.datasets import annotated

    assert _annotated(["CT_AbdomenCT*=1,2,3", "US=1"]) == {"CT_AbdomenCT*": [1, 2, 3], "US": [1]}
    assert annotated({"US": [1]}, 3, "2DBox_US_0000", "US").tolist() == [True, False, False]
    assert annotated({"CT_AbdomenCT*": [2]}, 3, "CT_AbdomenCT_0001", "CT").tolist() == [False, True, False]
    assert annotated({"US": [1]}, 3, "3DBox_CT_0000", "CT").all()  # no match: every class annotated
    (tmp_path / "map.json").write_text('{"US": [1, 2]}')
    assert _annotated([str(tmp_path / "map.json")]) == {"US": [1, 2]}
    (tmp_path / "bad.json").write_text('{"US": "1,2"}')
    with pytest.raises(SystemExit, match="bad.json: key 'US' is \"1,2\"; expected a list of class ids"):
        _annotated([str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit, match="expected GLOB=IDS"):
        _annotated(["US=one", "CT=1"])
