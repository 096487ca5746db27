"""The synthetic data set: task format, seeded, boxes from the ground truth, every modality."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from medsamlite.runtime.modality import UNKNOWN, parse_modality
from medsamlite.data.synthetic import MODALITIES, MODALITIES_3D, make_case, write_dataset
from medsamlite.runtime.npz import read_case


@pytest.mark.parametrize("modality", MODALITIES)
def test_case_format_and_boxes(modality):
    case = make_case(modality, index=3, seed=1, size=0.2)
    assert case.imgs.dtype == np.uint8 and case.gts.dtype in (np.uint8, np.uint16)
    if modality in MODALITIES_3D:
        assert case.name == f"3DBox_{modality}_0003" and case.imgs.ndim == 3 and case.boxes.shape[1] == 6
        assert case.gts.shape == case.imgs.shape and case.spacing.shape == (3,) and (case.spacing > 0).all()
        assert len(set(np.round(case.spacing, 3))) > 1  # anisotropic
    else:
        assert case.name == f"2DBox_{modality}_0003" and case.imgs.shape[2] == 3 and case.boxes.shape[1] == 4
        assert case.gts.shape == case.imgs.shape[:2]
    assert parse_modality(case.name) != UNKNOWN
    labels = np.unique(case.gts)
    assert labels[0] == 0 and list(labels[1:]) == list(range(1, len(case.boxes) + 1))
    for label, box in enumerate(case.boxes, start=1):
        idx = np.nonzero(case.gts == label)
        lo, hi = [i.min() for i in idx], [i.max() for i in idx]
        expected = [lo[1], lo[0], hi[1], hi[0]] if case.gts.ndim == 2 else [lo[2], lo[1], lo[0], hi[2], hi[1], hi[0]]
        assert box.tolist() == expected
    assert case.imgs.std() > 5  # not a blank image


def test_seeded():
    a, b, c = (make_case("CT", 0, seed=seed, size=0.2) for seed in (4, 4, 5))
    assert np.array_equal(a.imgs, b.imgs) and np.array_equal(a.gts, b.gts) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.imgs, c.imgs)


def test_boxes_hold_neighbours():
    """Box prompting is not trivial: most boxes also contain another structure's pixels."""
    crowded = 0
    for modality in ("CT", "MR", "X-Ray", "Fundus", "US"):
        case = make_case(modality, 0, size=0.3)
        for label, box in enumerate(case.boxes, start=1):
            region = (case.gts[box[1]:box[3] + 1, box[0]:box[2] + 1] if case.gts.ndim == 2
                      else case.gts[box[2]:box[5] + 1, box[1]:box[4] + 1, box[0]:box[3] + 1])
            crowded += bool(np.any((region != label) & (region != 0)))
    assert crowded >= 8


def test_lesion_contrast_is_low():
    """A lesion differs from its surroundings by a few grey levels only, under noise of similar size."""
    case = make_case("CT", 0, size=0.5)
    last = case.gts == case.gts.max()  # lesions are painted last
    ring = np.zeros_like(last)
    for axis in (1, 2):
        ring |= np.roll(last, 3, axis) | np.roll(last, -3, axis)
    ring &= ~last & (case.gts > 0)
    assert abs(float(case.imgs[last].mean()) - float(case.imgs[ring].mean())) < 60


def test_microscopy_has_many_cells():
    assert len(make_case("Microscope", 0, size=0.6).boxes) > 60


def test_write_dataset_reads_as_task_cases(tmp_path):
    paths = write_dataset(tmp_path, modalities=("PET", "Fundus"), per_modality=2, size=0.15, seed=2)
    assert [p.name for p in paths] == ["3DBox_PET_0000.npz", "3DBox_PET_0001.npz",
                                       "2DBox_Fundus_0000.npz", "2DBox_Fundus_0001.npz"]
    for path in paths:
        case = read_case(path)  # the predictor's own validation accepts them
        gts = np.load(tmp_path / "gts" / path.name)
        assert set(gts.files) == {"gts", "spacing"} and gts["gts"].shape == case.imgs.shape[:gts["gts"].ndim]
        assert set(np.load(path).files) == {"imgs", "boxes", "spacing"}


def test_bad_arguments():
    with pytest.raises(ValueError, match="modality"):
        make_case("Xray")
    with pytest.raises(ValueError, match="size"):
        make_case("CT", size=0)


def test_import_is_light():
    code = ("import sys, medsamlite.data.synthetic; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'scipy', 'monai', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_depth_scales_slices_only():
    thin, deep = make_case("MR", 0, size=0.2, depth=0.4), make_case("MR", 0, size=0.2, depth=1.0)
    assert thin.imgs.shape[1:] == deep.imgs.shape[1:] and thin.imgs.shape[0] < deep.imgs.shape[0]
    assert np.array_equal(thin.spacing, deep.spacing)
