"""Modality parsing, the task-format datasets and the case split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medsamlite.config import ModelConfig
from medsamlite.data.datasets import (NpzImageDataset, NpzSliceDataset, case_files, mask_to_frame, split_cases)
from medsamlite.runtime.modality import UNKNOWN, parse_modality
from medsamlite.runtime.npz import CaseError
from medsamlite.runtime.preprocess import preprocess_image, scale_boxes


@pytest.mark.parametrize("name,expected", [
    ("2DBox_X-Ray_0053.npz", "XRay"), ("3DBox_CT_0566.npz", "CT"), ("3DBox_MR_0121", "MR"),
    ("2DBox_Microscope_0016.npz", "Microscopy"), ("/data/imgs/2DBox_Endoscopy_0086.npz", "Endoscopy"),
    ("CT_AbdomenCT1K_Case_00001.npz", "CT"), ("Microscopy_NeurIPS_cell_1.npz", "Microscopy"),
    ("XRay_chest_2.npz", "XRay"), ("US_breast_3.npz", "US"), ("2DBox_Mammo_1.npz", "Mammography"),
    ("3DBox_Foo_0001.npz", UNKNOWN), ("scan.npz", UNKNOWN), ("", UNKNOWN),
])
def test_parse_modality(name, expected):
    assert parse_modality(name) == expected


def test_modality_overrides_win_over_the_name():
    overrides = {"3DBox_*_CTA_*": "CT", "2DBox_X-Ray_0053*": "Fundus"}
    assert parse_modality("3DBox_Foo_CTA_7.npz", overrides) == "CT"
    assert parse_modality("/x/2DBox_X-Ray_0053.npz", overrides) == "Fundus"
    assert parse_modality("2DBox_X-Ray_0054.npz", overrides) == "XRay"


def _image_2d(rng, h=60, w=80):
    image = rng.integers(0, 80, size=(h, w, 3)).astype(np.uint8)
    gts = np.zeros((h, w), np.uint8)
    gts[10:30, 20:50] = 1
    yy, xx = np.mgrid[:h, :w]
    gts[(yy - 45) ** 2 + (xx - 60) ** 2 < 64] = 2
    image[gts > 0] += 120
    return image, gts


def _volume(rng, d=6, h=40, w=50):
    vol = rng.integers(0, 60, size=(d, h, w)).astype(np.uint8)
    gts = np.zeros((d, h, w), np.uint8)
    gts[2:5, 10:25, 15:35] = 3
    vol[gts > 0] += 150
    return vol, gts


def write_task_layout(root: Path, seed: int = 0, n2d: int = 3, n3d: int = 2) -> Path:
    """imgs/<name>.npz (imgs, boxes, spacing) and gts/<name>.npz (gts), as the synthetic generator writes them."""
    rng = np.random.default_rng(seed)
    (root / "imgs").mkdir(parents=True)
    (root / "gts").mkdir()
    for i in range(n2d):
        image, gts = _image_2d(rng)
        name = f"2DBox_{'Endoscopy' if i % 2 else 'Dermoscopy'}_{i:04d}.npz"
        np.savez_compressed(root / "imgs" / name, imgs=image, boxes=np.zeros((0, 4)), spacing=np.ones(2))
        np.savez_compressed(root / "gts" / name, gts=gts)
    for i in range(n3d):
        vol, gts = _volume(rng)
        name = f"3DBox_CT_{i:04d}.npz"
        np.savez_compressed(root / "imgs" / name, imgs=vol, boxes=np.zeros((0, 6)), spacing=np.ones(3))
        np.savez_compressed(root / "gts" / name, gts=gts)
    return root


@pytest.fixture()
def task_dir(tmp_path: Path) -> Path:
    return write_task_layout(tmp_path / "data")


def test_find_cases_in_both_layouts(task_dir: Path, tmp_path: Path):
    assert [f.name for f in case_files(task_dir)][:1] == ["2DBox_Dermoscopy_0000.npz"]
    # the challenge's training layout: imgs and gts in one file, in sub-folders
    flat = tmp_path / "train" / "CT" / "AbdomenCT1K"
    flat.mkdir(parents=True)
    vol, gts = _volume(np.random.default_rng(1))
    np.savez_compressed(flat / "CT_AbdomenCT1K_Case_1.npz", imgs=vol, gts=gts)
    ds = NpzSliceDataset(tmp_path / "train", slices="all")
    assert len(ds) == 3 and ds.modalities == ["CT"] * 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .npz cases found"):
        case_files(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        case_files(tmp_path / "missing")


def test_item_matches_inference_preprocessing(task_dir: Path):
    ds = NpzSliceDataset([task_dir / "imgs" / "2DBox_Dermoscopy_0000.npz"], augment=False, box_shift=0)
    item = ds[0]
    with np.load(task_dir / "imgs" / "2DBox_Dermoscopy_0000.npz") as z:
        image = z["imgs"]
    with np.load(task_dir / "gts" / "2DBox_Dermoscopy_0000.npz") as z:
        gts = z["gts"]
    expected, _ = preprocess_image(image, 256, "minmax")
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 256, 256)
    np.testing.assert_array_equal(item["image"].numpy(), expected[0])
    assert item["modality"] == "Dermoscopy" and item["case"] == "2DBox_Dermoscopy_0000" and item["slice"] == -1
    target = gts == item["label"]
    ys, xs = np.nonzero(target)
    tight = scale_boxes(np.array([[xs.min(), ys.min(), xs.max(), ys.max()]]), target.shape, 256)[0]
    np.testing.assert_array_equal(item["box"].numpy(), tight)
    assert item["mask"].shape == (1, 256, 256)
    np.testing.assert_array_equal(item["mask"][0].numpy(), mask_to_frame(target, 256, 256))
    # the target lies inside its box in the model frame, up to the truncation of the inclusive max pixel
    ys, xs = np.nonzero(item["mask"][0].numpy())
    x0, y0, x1, y1 = item["box"].tolist()
    scale = 256 / max(target.shape)
    assert x0 <= xs.min() and y0 <= ys.min() and xs.max() < x1 + scale and ys.max() < y1 + scale


def test_box_widening_flips_and_labels_vary_by_epoch(task_dir: Path):
    path = task_dir / "imgs" / "2DBox_Endoscopy_0001.npz"
    plain = NpzSliceDataset([path], augment=False, box_shift=0)
    ds = NpzSliceDataset([path], augment=True, box_shift=5)
    with np.load(path) as z:
        image = z["imgs"]
    widenings, labels, flipped = set(), set(), 0
    for epoch in range(40):
        ds.set_epoch(epoch)
        plain.set_epoch(epoch)
        item, ref = ds[0], plain[0]
        labels.add(item["label"])
        if item["label"] != ref["label"]:
            continue
        # flips: the image is the preprocessed flipped image, and the mask flips with it
        for axes in ((), (1,), (0,), (0, 1)):
            candidate = np.flip(image, axis=axes) if axes else image
            if np.array_equal(item["image"].numpy(), preprocess_image(candidate, 256)[0][0]):
                flipped += bool(axes)
                break
        else:
            pytest.fail("image is not a flip of the preprocessed case")
        if not axes:
            delta = (item["box"] - ref["box"]).numpy() * np.array([-1, -1, 1, 1])
            assert np.all(delta >= 0) and np.all(delta <= 5)
            widenings.update(delta.astype(int).tolist())
            assert torch.equal(item["mask"], ref["mask"])
    assert labels == {1, 2}
    assert flipped > 0
    assert len(widenings) >= 4  # draws spread over 0..5 px


def test_items_are_reproducible_per_epoch_and_independent_of_workers(task_dir: Path):
    ds = NpzSliceDataset(task_dir, seed=3)
    ds.set_epoch(2)
    direct = [ds[i] for i in range(len(ds))]
    loaded = list(DataLoader(ds, batch_size=1, num_workers=2))
    for a, b in zip(direct, loaded):
        assert torch.equal(a["image"], b["image"][0]) and torch.equal(a["box"], b["box"][0])
        assert a["case"] == b["case"][0] and a["label"] == int(b["label"][0])
    ds.set_epoch(3)
    assert any(not torch.equal(direct[i]["box"], ds[i]["box"]) or direct[i]["slice"] != ds[i]["slice"]
               for i in range(len(ds)))


def test_3d_slice_modes(task_dir: Path):
    random_mode = NpzSliceDataset(task_dir, slices="random")
    all_mode = NpzSliceDataset(task_dir, slices="all")
    assert len(random_mode) == 5  # 3 images + 2 volumes
    assert len(all_mode) == 3 + 2 * 3  # each volume has labelled slices 2, 3, 4
    seen = set()
    for epoch in range(12):
        random_mode.set_epoch(epoch)
        item = random_mode[3]
        assert item["case"] == "3DBox_CT_0000" and item["label"] == 3
        seen.add(item["slice"])
    assert seen == {2, 3, 4}
    assert sorted(all_mode[i]["slice"] for i in range(3, 6)) == [2, 3, 4]
    assert random_mode.modalities.count("CT") == 2


def test_larger_input_keeps_low_res_mask_and_optional_full_mask(task_dir: Path):
    config = ModelConfig(name="x", encoder="efficientvit_l0", input_size=512, normalization="imagenet")
    item = NpzSliceDataset(task_dir, config, full_mask=True)[0]
    assert item["image"].shape == (3, 512, 512) and item["mask"].shape == (1, 256, 256)
    assert item["mask_full"].shape == (1, 512, 512)
    assert item["image"].min() < 0  # ImageNet normalisation
    low = torch.nn.functional.avg_pool2d(item["mask_full"], 2) >= 0.5
    assert (low == item["mask"].bool()).float().mean() > 0.99
    ys, xs = np.nonzero(item["mask_full"][0].numpy())  # boxes are in the 512 frame, like the full mask
    x0, y0, x1, y1 = item["box"].tolist()
    assert x0 <= xs.min() and y0 <= ys.min() and xs.max() < x1 + 512 / 80 and ys.max() < y1 + 512 / 80
    assert x1 - x0 > (xs.max() - xs.min()) / 2


def test_multi_label_targets_and_annotation_mask(task_dir: Path):
    ds = NpzSliceDataset(task_dir, num_classes=3, annotated_classes={"2DBox_Endoscopy_*": [1], "3DBox_*": [3]},
                         augment=False)
    derm, endo, ct = ds[0], ds[2], ds[3]  # files sort as Dermoscopy 0, 2, Endoscopy 1, CT 0, 1
    assert derm["targets"].shape == (3, 256, 256)
    assert derm["annotated"].tolist() == [True, True, True]
    assert endo["annotated"].tolist() == [True, False, False]
    assert ct["annotated"].tolist() == [False, False, True]
    assert derm["targets"][0].sum() > 0 and derm["targets"][1].sum() > 0 and derm["targets"][2].sum() == 0
    with pytest.raises(CaseError, match="label 3"):
        NpzSliceDataset(task_dir, num_classes=2)


def test_bad_labels_name_the_file_and_key(task_dir: Path):
    np.savez_compressed(task_dir / "gts" / "2DBox_Endoscopy_0001.npz", gts=np.ones((5, 5), np.uint8))
    ds = NpzSliceDataset(task_dir)
    with pytest.raises(CaseError, match=r"2DBox_Endoscopy_0001\.npz: key 'gts' has shape \(5, 5\)"):
        ds[2]
    np.savez_compressed(task_dir / "gts" / "2DBox_Endoscopy_0001.npz", labels=np.ones((60, 80), np.uint8))
    with pytest.raises(CaseError, match="missing key 'gts'"):
        NpzSliceDataset(task_dir)


def test_split_by_case_stratified(task_dir: Path):
    files = case_files(task_dir)
    train, val = split_cases(files, val_fraction=0.4, seed=1)
    assert sorted(train + val) == sorted(files) and not set(train) & set(val)
    assert {parse_modality(f) for f in val} == {"CT", "Dermoscopy"}  # Endoscopy has one case: train only
    assert split_cases(files, 0.4, seed=1) == (train, val)


def test_image_dataset_for_distillation(task_dir: Path):
    student = ModelConfig(name="s", encoder="e", input_size=256)
    ds = NpzImageDataset(task_dir, {"student": student, "teacher": (512, "imagenet")}, slices="all", augment=False)
    assert len(ds) == 3 + 2 * 6  # every slice, labelled or not
    item = ds[4]
    with np.load(task_dir / "imgs" / "3DBox_CT_0000.npz") as z:
        slice_ = z["imgs"][item["slice"]]
    np.testing.assert_array_equal(item["student"].numpy(), preprocess_image(slice_, 256, "minmax")[0][0])
    np.testing.assert_array_equal(item["teacher"].numpy(), preprocess_image(slice_, 512, "imagenet")[0][0])


def test_cases_without_labels_are_skipped_with_a_warning(task_dir: Path):
    np.savez_compressed(task_dir / "gts" / "2DBox_Endoscopy_0001.npz", gts=np.zeros((60, 80), np.uint8))
    with pytest.warns(UserWarning, match=r"1 case\(s\) skipped: .*2DBox_Endoscopy_0001\.npz: no labelled pixel"):
        ds = NpzSliceDataset(task_dir)
    assert len(ds) == 4 and "Endoscopy" not in ds.modalities


def test_k_targets_per_image_are_drawn_without_replacement_and_padded(task_dir: Path):
    one = NpzSliceDataset(task_dir, augment=False, box_shift=0)
    ds = NpzSliceDataset(task_dir, augment=False, box_shift=0, targets_per_image=3)
    item = ds[0]  # Dermoscopy 0: labels 1 and 2, so one padding row
    assert item["boxes"].shape == (3, 4) and item["masks"].shape == (3, 1, 256, 256)
    assert item["valid"].tolist() == [True, True, False] and item["labels"].dtype == torch.int64
    assert sorted(item["labels"][:2].tolist()) == [1, 2] and item["labels"][2] == 0
    assert item["boxes"][2].abs().sum() == 0 and item["masks"][2].sum() == 0
    assert "box" not in item and "mask" not in item
    # each valid row is the one-target item of that label
    for row, label in enumerate(item["labels"][:2].tolist()):
        for epoch in range(20):
            one.set_epoch(epoch)
            ref = one[0]
            if ref["label"] == label:
                break
        assert torch.equal(item["masks"][row], ref["mask"]) and torch.equal(item["boxes"][row], ref["box"])
    assert torch.equal(item["image"], one[0]["image"])
    single = NpzSliceDataset(task_dir, targets_per_image=1)[3]  # a CT volume: one label
    assert single["valid"].tolist() == [True] and single["labels"].tolist() == [3]
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["boxes"].shape == (2, 3, 4) and batch["valid"].shape == (2, 3)
    with pytest.raises(ValueError, match="targets_per_image"):
        NpzSliceDataset(task_dir, targets_per_image=0)
