"""`medsamlite data prepare` and `PreparedDataset`: identity with the .npz path, resume, bad cases, NIfTI and PNG."""
from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medsamlite.cli import main
from medsamlite.data import prepare as prepare_module
from medsamlite.data.datasets import NpzSliceDataset, split_cases
from medsamlite.data.prepare import CASES_DIR, INDEX_FILE, prepare
from medsamlite.data.prepared import PreparedDataset
from medsamlite.data.sources import CT_WINDOWS, clip_percentiles, window_image
from test_datasets import write_task_layout


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    return write_task_layout(tmp_path / "src")


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


@pytest.mark.parametrize("k", [None, 3])
def test_prepared_items_are_identical_to_the_npz_items(src: Path, tmp_path: Path, k):
    report = prepare(src, tmp_path / "dst", workers=2, progress=False)
    assert report.ok and report.counts["prepared"] == 5
    assert report.modalities["CT"] == {"cases": 2, "slices": 6, "labels": 6, "bytes": report.modalities["CT"]["bytes"]}
    npz = NpzSliceDataset(src, slices="all", seed=7, targets_per_image=k, box_shift=5)
    prepared = PreparedDataset(tmp_path / "dst", seed=7, targets_per_image=k, box_shift=5)
    assert len(prepared) == len(npz) and prepared.modalities == npz.modalities
    for epoch in (0, 1):
        npz.set_epoch(epoch)
        prepared.set_epoch(epoch)
        for i in range(len(npz)):
            _assert_same(npz[i], prepared[i])


def test_prepared_dataset_in_workers_and_selections(src: Path, tmp_path: Path):
    prepare(src, tmp_path / "dst", workers=0, progress=False)
    ds = PreparedDataset(tmp_path / "dst", targets_per_image=2, seed=1)
    direct = [ds[i] for i in range(len(ds))]
    for a, b in zip(direct, DataLoader(ds, batch_size=1, num_workers=2)):
        assert torch.equal(a["image"], b["image"][0]) and torch.equal(a["masks"], b["masks"][0])
    copy = pickle.loads(pickle.dumps(ds))  # what a spawned worker receives: paths and bounds, no maps
    assert len(pickle.dumps(ds)) < 4096 and copy._open == OrderedDict()
    _assert_same(copy[3], direct[3])
    capped = PreparedDataset(tmp_path / "dst", max_per_modality=2)
    assert sorted(capped.modalities) == ["CT", "CT", "Dermoscopy", "Dermoscopy", "Endoscopy"]
    train, val = split_cases(ds.case_names, 0.5, modalities=ds.case_modalities)
    assert len(train) == 3 and len(val) == 2 and ds.case_modalities["3DBox_CT_0000"] == "CT"
    assert len(PreparedDataset(tmp_path / "dst", cases=val)) + len(PreparedDataset(tmp_path / "dst", cases=train)) == len(ds)
    only_ct = PreparedDataset(tmp_path / "dst", cases=[n for n in ds.case_names if n.startswith("3DBox")])
    assert only_ct.modalities == ["CT"] * 6 and {only_ct[i]["slice"] for i in range(6)} == {2, 3, 4}
    index = np.load(tmp_path / "dst" / INDEX_FILE)
    row = index[(index["label"] == 3)][0]
    assert tuple(row["box"]) == (15, 10, 34, 24) and row["area"] == 15 * 20 and row["dim"] == 3


def test_an_interrupted_prepare_resumes(src: Path, tmp_path: Path, monkeypatch):
    calls = []

    def interrupt_third(a, b):  # the third case is cut off between its files and its rename
        calls.append(b)
        if len(calls) == 3:
            raise KeyboardInterrupt
        os.rename(a, b)

    monkeypatch.setattr(prepare_module.os, "replace", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        prepare(src, tmp_path / "dst", workers=0, progress=False)
    monkeypatch.undo()
    cases = tmp_path / "dst" / CASES_DIR
    assert len(list(cases.iterdir())) == 2, "the interrupted case left its temporary folder"
    assert not (tmp_path / "dst" / INDEX_FILE).exists()
    for killed in (".3DBox_CT_0000.k3j2h1_x.tmp", ".tmp-2DBox_Endoscopy_0001-123"):  # what a kill leaves (older
        (cases / killed).mkdir()                                                   # versions: `.tmp-` names)
        (cases / killed / "image.npy").write_bytes(b"partial")
    report = prepare(src, tmp_path / "dst", workers=0, progress=False)
    assert report.counts["done"] == 2 and report.counts["prepared"] == 3
    assert not [p for p in cases.iterdir() if p.name.startswith(".")]
    prepare(src, tmp_path / "fresh", workers=0, progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "dst" / INDEX_FILE), np.load(tmp_path / "fresh" / INDEX_FILE))


def test_a_corrupt_case_is_named_and_skipped(src: Path, tmp_path: Path, capsys):
    bad = src / "imgs" / "2DBox_Endoscopy_0001.npz"
    bad.write_bytes(b"not a zip archive")
    code = main(["data", "prepare", str(src), str(tmp_path / "dst"), "--workers", "0", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1
    assert [line for line in err.splitlines() if "2DBox_Endoscopy_0001.npz" in line][0].startswith(str(bad))
    assert "4 prepared" in out and "1 failed" in out
    assert len(PreparedDataset(tmp_path / "dst")) == 2 + 6


def _nifti(path: Path, data: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])), str(path))


def test_nifti_pairs_get_the_task_preprocessing(tmp_path: Path):
    rng = np.random.default_rng(0)
    ct = rng.normal(0, 300, size=(30, 20, 5)).astype(np.float32)  # (x, y, z) as NIfTI stores it
    labels = np.zeros(ct.shape, np.uint8)
    labels[5:15, 4:10, 1:3] = 2  # slices 1 and 2 labelled, 0, 3, 4 dropped
    _nifti(tmp_path / "src" / "imagesTr" / "CT_liver_001_0000.nii.gz", ct)
    _nifti(tmp_path / "src" / "labelsTr" / "CT_liver_001.nii.gz", labels)
    mr = np.abs(rng.normal(100, 50, size=(16, 16, 3))).astype(np.float32)
    mr[:2] = 0
    _nifti(tmp_path / "src" / "imagesTr" / "MR_brain_001_0000.nii.gz", mr)
    _nifti(tmp_path / "src" / "labelsTr" / "MR_brain_001.nii.gz", (mr > 120).astype(np.uint8))
    report = prepare(tmp_path / "src", tmp_path / "dst", workers=0, window=CT_WINDOWS["lung"], progress=False)
    assert report.ok and report.counts["prepared"] == 2
    case = tmp_path / "dst" / CASES_DIR / "CT_liver_001"
    image, gts = np.load(case / "image.npy"), np.load(case / "labels.npy")
    expected = window_image(ct.transpose(2, 1, 0), -600, 1500)[[1, 2]]
    assert image.dtype == np.uint8 and image.shape == (2, 20, 30)
    np.testing.assert_array_equal(image, expected)
    np.testing.assert_array_equal(gts, labels.transpose(2, 1, 0)[[1, 2]])
    clipped = np.clip(ct, -1350, 150)
    np.testing.assert_array_equal(window_image(ct, -600, 1500),
                                  ((clipped - clipped.min()) / (clipped.max() - clipped.min()) * 255).astype(np.uint8))
    mr_image = np.load(tmp_path / "dst" / CASES_DIR / "MR_brain_001" / "image.npy")
    full = clip_percentiles(mr.transpose(2, 1, 0))
    assert (full[:, :, :2] == 0).all() and full.max() == 255
    np.testing.assert_array_equal(mr_image, full)  # every MR slice has a label here
    ds = PreparedDataset(tmp_path / "dst", targets_per_image=2)
    assert ds.modalities == ["CT", "CT", "MR", "MR", "MR"] and ds[0]["slice"] == 1


def test_png_and_jpg_pairs(tmp_path: Path):
    image = np.zeros((40, 50, 3), np.uint8)
    image[..., 2] = 200  # red in RGB, written as BGR by OpenCV
    mask = np.zeros((40, 50), np.uint8)
    mask[10:20, 5:25] = 255
    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "src" / "images" / "Dermoscopy_isic_1.png"), image[..., ::-1])
    cv2.imwrite(str(tmp_path / "src" / "masks" / "Dermoscopy_isic_1.png"), mask)
    cv2.imwrite(str(tmp_path / "src" / "images" / "Fundus_x_2.jpg"), image[..., 0])
    labels = np.zeros((40, 50), np.uint8)
    labels[1:5, 1:5], labels[30:35, 40:45] = 1, 4
    cv2.imwrite(str(tmp_path / "src" / "masks" / "Fundus_x_2.png"), labels)
    cv2.imwrite(str(tmp_path / "src" / "images" / "US_orphan_3.png"), image)
    code = main(["data", "prepare", str(tmp_path / "src"), str(tmp_path / "dst"), "--workers", "0", "--no-progress"])
    assert code == 1  # the image without a mask is named
    derm = tmp_path / "dst" / CASES_DIR / "Dermoscopy_isic_1"
    np.testing.assert_array_equal(np.load(derm / "image.npy")[0], image)
    np.testing.assert_array_equal(np.load(derm / "labels.npy")[0], mask // 255)
    ds = PreparedDataset(tmp_path / "dst", targets_per_image=3, augment=False)
    assert ds.modalities == ["Dermoscopy", "Fundus"]
    fundus = ds[1]
    assert fundus["labels"].tolist()[:2] in ([1, 4], [4, 1]) and fundus["valid"].tolist() == [True, True, False]
    assert fundus["image"].shape == (3, 256, 256)
