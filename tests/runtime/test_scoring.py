"""`medsamlite evaluate`: existing segmentations scored as the task does, partial ground truth, torch-free."""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np

from medsamlite.data.synthetic import write_dataset
from medsamlite.runtime.metrics import evaluate_case

SCRIPT = ("import sys; from medsamlite.cli import main; code = main(sys.argv[1:]); "
          "assert not {'torch', 'scipy'} & set(sys.modules), 'heavy import'; sys.exit(code)")


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, "evaluate", *args], capture_output=True, text=True)


def test_evaluate_scores_skips_and_reports(tmp_path):
    files = write_dataset(tmp_path / "data", modalities=("US", "CT", "Endoscopy"), size=0.1, depth=0.05)
    gts_dir, segs_dir = tmp_path / "data" / "gts", tmp_path / "segs"
    segs_dir.mkdir()
    expected = {}
    for i, image in enumerate(files):
        with np.load(gts_dir / image.name) as g:
            gts, spacing = g["gts"], g["spacing"]
        segs = np.roll(gts, i, axis=-1)  # a different error per case
        np.savez(segs_dir / image.name, segs=segs)
        expected[image.stem] = evaluate_case(segs, gts, spacing if gts.ndim == 3 else None)
    np.savez(segs_dir / "2DBox_US_0009.npz", segs=np.zeros((4, 4), np.uint8))  # no ground truth: skipped
    (gts_dir / "2DBox_Fundus_0000.npz").write_bytes((gts_dir / files[0].name).read_bytes())  # no segmentation

    done = evaluate("--segs", str(segs_dir), "--gts", str(gts_dir), "--out", str(tmp_path / "report"))
    assert done.returncode == 0, done.stderr
    assert "2DBox_US_0009.npz: no ground truth" in done.stderr
    assert "2DBox_Fundus_0000.npz: no segmentation" in done.stderr
    rows = list(csv.DictReader((tmp_path / "report" / "metrics.csv").open()))
    assert {r["case"] for r in rows} == set(expected)
    for row in rows:
        assert abs(float(row["dsc"]) - expected[row["case"]].mean_dsc) < 1e-12
        assert abs(float(row["nsd"]) - expected[row["case"]].mean_nsd) < 1e-12
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert all(f"| {m} | 1 |" in summary for m in ("US", "CT", "Endoscopy")) and "| all | 3 |" in summary


def test_evaluate_names_a_bad_file_and_goes_on(tmp_path):
    files = write_dataset(tmp_path / "data", modalities=("US", "Endoscopy"), size=0.1)
    gts_dir, segs_dir = tmp_path / "data" / "gts", tmp_path / "segs"
    segs_dir.mkdir()
    with np.load(gts_dir / files[0].name) as g:
        np.savez(segs_dir / files[0].name, segs=g["gts"])
    np.savez(segs_dir / files[1].name, segs=np.zeros((3, 3), np.uint8))  # wrong shape
    done = evaluate("--segs", str(segs_dir), "--gts", str(gts_dir))
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and files[1].name in errors[0] and "key 'segs' has shape (3, 3)" in errors[0]
    assert "| all | 1 |" in (segs_dir / "summary.md").read_text()


def test_anisotropic_3d_nsd_is_the_tasks(tmp_path):
    """The task's evaluation passes the stored (x, y, z) spacing unchanged to DeepMind's surface distances of the
    (z, y, x) arrays; `evaluate` gives exactly that, and the synthetic writer stores (x, y, z)."""
    import warnings

    np.Inf, np.NaN = np.inf, np.nan  # surface-distance predates NumPy 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import surface_distance as sd
    from medsamlite.data.synthetic import make_case, write_case
    from medsamlite.runtime.scoring import score_file

    case = make_case("CT", 0, size=0.1, depth=0.3)
    image, gt_path = write_case(case, tmp_path)
    stored = np.load(gt_path)["spacing"]
    assert np.array_equal(stored, case.spacing[::-1]) and stored[0] != stored[2]
    segs = np.roll(case.gts, 1, axis=0)
    np.savez(tmp_path / "segs.npz", segs=segs)
    label = int(case.gts.max())
    distances = sd.compute_surface_distances(case.gts == label, segs == label, tuple(stored))
    expected = sd.compute_surface_dice_at_tolerance(distances, 2.0)
    score = score_file(tmp_path / "segs.npz", gt_path)
    assert abs(score.nsd[-1] - expected) < 1e-6
