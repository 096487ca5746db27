"""DSC / NSD against DeepMind's own `surface-distance` package and the reference pipeline's golden values."""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import GOLDEN_DIR
from medsamlite.runtime.metrics import dsc, evaluate_case, nsd

GOLDEN = GOLDEN_DIR / "litemedsam" / "pipeline.npz"


@pytest.fixture(scope="module")
def deepmind():
    """DeepMind's surface-distance (PyPI `surface-distance`), patched for NumPy 2's removed aliases."""
    np.Inf, np.NaN = np.inf, np.nan  # the package predates NumPy 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import surface_distance
    return surface_distance


def reference_nsd(sd, pred, gt, spacing, tolerance):
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):  # both empty: DeepMind divides 0 by 0
        warnings.simplefilter("ignore", DeprecationWarning)
        distances = sd.compute_surface_distances(gt.astype(bool), pred.astype(bool), spacing)
        return sd.compute_surface_dice_at_tolerance(distances, tolerance)


def smooth_mask(rng, shape, threshold):
    """A blobby mask: box-blurred noise thresholded (organ-like boundaries, several components)."""
    noise = rng.random(shape)
    for axis in range(len(shape)):
        noise = sum(np.roll(noise, k, axis) for k in (-2, -1, 0, 1, 2)) / 5
    return noise > threshold


def random_pairs():
    rng = np.random.default_rng(7)
    for i in range(24):
        ndim = 2 if i % 2 == 0 else 3
        shape = tuple(int(s) for s in rng.integers(4, 40, ndim))
        spacing = tuple(float(s) for s in rng.uniform(0.3, 3.0, ndim))
        if i % 3 == 0:  # salt-and-pepper: many tiny components touching the border
            gt, pred = rng.random(shape) > 0.6, rng.random(shape) > 0.6
        else:
            gt = smooth_mask(rng, shape, 0.5)
            pred = np.roll(gt, int(rng.integers(-3, 4)), axis=int(rng.integers(ndim))) ^ (rng.random(shape) > 0.97)
        yield pytest.param(pred, gt, spacing, id=f"{ndim}d-{i}")


@pytest.mark.parametrize("pred, gt, spacing", random_pairs())
@pytest.mark.parametrize("tolerance", [0.0, 1.0, 2.0, 3.7])
def test_nsd_equals_deepmind(deepmind, pred, gt, spacing, tolerance):
    assert abs(nsd(pred, gt, spacing, tolerance) - reference_nsd(deepmind, pred, gt, spacing, tolerance)) < 1e-6


def test_nsd_is_symmetric_and_one_on_identity():
    rng = np.random.default_rng(3)
    a, b = smooth_mask(rng, (9, 30, 25), 0.5), smooth_mask(rng, (9, 30, 25), 0.5)
    assert nsd(a, b, (2.5, 0.7, 0.9)) == pytest.approx(nsd(b, a, (2.5, 0.7, 0.9)), abs=1e-12)
    assert nsd(a, a, (2.5, 0.7, 0.9), tolerance=0.0) == 1.0


def test_empty_masks(deepmind):
    empty, blob = np.zeros((5, 12, 14), bool), np.zeros((5, 12, 14), bool)
    blob[1:4, 3:8, 2:9] = True
    assert np.isnan(reference_nsd(deepmind, empty, empty, (1, 1, 1), 2.0))  # DeepMind: 0/0
    assert nsd(empty, empty, (1, 1, 1)) == 1.0 and dsc(empty, empty) == 1.0
    for pred, gt in ((empty, blob), (blob, empty)):
        assert reference_nsd(deepmind, pred, gt, (2.0, 1.0, 0.5), 2.0) == 0.0
        assert nsd(pred, gt, (2.0, 1.0, 0.5)) == 0.0 and dsc(pred, gt) == 0.0


def test_single_voxel_and_border(deepmind):
    shape = (6, 10, 11)
    single = np.zeros(shape, bool)
    single[0, 0, 0] = True  # a corner voxel: its surface touches three borders
    full = np.ones(shape, bool)
    shifted = full.copy()
    shifted[:, :, :2] = False
    corner2d = np.zeros(shape[1:], bool)
    corner2d[-1, -1] = True
    cases = [(single, single, (1.0, 2.0, 3.0), 0.0), (single, full, (1.0, 2.0, 3.0), 5.0),
             (shifted, full, (3.0, 0.5, 0.8), 1.0), (full, shifted, (3.0, 0.5, 0.8), 2.0),
             (corner2d, full[0], (0.7, 1.3), 2.0), (corner2d, corner2d, (0.7, 1.3), 0.0)]
    for pred, gt, spacing, tolerance in cases:
        expected = reference_nsd(deepmind, pred, gt, spacing, tolerance)
        assert abs(nsd(pred, gt, spacing, tolerance) - expected) < 1e-6, (spacing, tolerance)


def test_dsc_equals_deepmind(deepmind):
    rng = np.random.default_rng(11)
    for _ in range(5):
        a, b = rng.random((7, 9, 13)) > 0.5, rng.random((7, 9, 13)) > 0.3
        assert dsc(a, b) == pytest.approx(deepmind.compute_dice_coefficient(b, a), abs=1e-12)


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


@pytest.mark.parametrize("segs, gts, spacing, dsc_key, nsd_key", [
    ("case2d_segs", "case2d_gts", None, "metric_dsc2", "metric_nsd2"),
    ("case3d_segs", "case3d_gts", "case3d_spacing", "metric_dsc3", "metric_nsd3"),
    ("case3d_gts_shift_x2", "case3d_gts", "case3d_spacing", "metric_dsc3_shift", "metric_nsd3_shift"),
    ("case2d_gts_shift_x3", "case2d_gts", None, "metric_dsc2_shift", "metric_nsd2_shift"),
])
def test_golden_pipeline_metrics(golden, segs, gts, spacing, dsc_key, nsd_key):
    # raw function values: the golden file stores them without the low-DSC rule
    score = evaluate_case(golden[segs], golden[gts], None if spacing is None else golden[spacing],
                          zero_nsd_below_dsc=None)
    assert abs(score.mean_dsc - float(golden[dsc_key])) < 1e-6
    assert abs(score.mean_nsd - float(golden[nsd_key])) < 1e-6


def test_golden_reversed_spacing(golden):
    score = evaluate_case(golden["case3d_gts_shift_x2"], golden["case3d_gts"], golden["case3d_spacing"][::-1],
                          zero_nsd_below_dsc=None)
    assert abs(score.mean_nsd - float(golden["metric_nsd3_shift_rev_spacing"])) < 1e-6


def test_golden_low_dsc_rule_zeroes_nsd(golden):
    score = evaluate_case(golden["case3d_segs"], golden["case3d_gts"], golden["case3d_spacing"])
    assert score.mean_dsc < 0.2 and score.nsd_zeroed and score.mean_nsd == 0.0 and score.nsd == [0.0, 0.0]
    kept = evaluate_case(golden["case3d_gts_shift_x2"], golden["case3d_gts"], golden["case3d_spacing"])
    assert not kept.nsd_zeroed and abs(kept.mean_nsd - float(golden["metric_nsd3_shift"])) < 1e-6


def test_evaluate_case_labels_and_2d_frame(deepmind):
    gts = np.zeros((20, 24), np.uint8)
    gts[2:9, 3:12], gts[12:18, 10:20] = 1, 3  # label 2 absent from gt
    segs = np.zeros_like(gts)
    segs[3:9, 3:12], segs[0:2, 0:2] = 1, 2
    score = evaluate_case(segs, gts, spacing=(5.0, 5.0), zero_nsd_below_dsc=None)  # 2D ignores the spacing
    assert score.labels == [1, 2, 3]
    assert score.dsc == pytest.approx([2 * 54 / (63 + 54), 0.0, 0.0])
    expected = reference_nsd(deepmind, (segs == 1)[..., None], (gts == 1)[..., None], (1, 1, 1), 2.0)
    assert score.nsd[0] == pytest.approx(expected, abs=1e-9) and score.nsd[1:] == [0.0, 0.0]
    assert score.mean_dsc == pytest.approx(np.mean(score.dsc))
    both_empty = evaluate_case(np.where(segs == 2, 0, segs), gts, zero_nsd_below_dsc=None)
    assert both_empty.dsc[1] == 1.0 and both_empty.nsd[1] == 1.0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="shape"):
        evaluate_case(np.zeros((4, 5)), np.ones((4, 6)))
    with pytest.raises(ValueError, match="spacing"):
        evaluate_case(np.zeros((2, 4, 5)), np.ones((2, 4, 5)), spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="no foreground"):
        evaluate_case(np.zeros((4, 5)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="spacing"):
        nsd(np.ones((3, 3)), np.ones((3, 3)), (1.0, 0.0))
    with pytest.raises(ValueError, match="tolerance"):
        nsd(np.ones((3, 3)), np.ones((3, 3)), (1.0, 1.0), tolerance=-1)


def test_import_is_light():
    code = ("import sys, medsamlite.runtime.metrics; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'scipy', 'monai', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
