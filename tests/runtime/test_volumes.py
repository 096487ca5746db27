"""NIfTI volumes and DICOM series through `predict` and `evaluate`: the .npz path's label maps, geometry kept,
world-coordinate prompts, the slice axis of the acquisition, one-line errors for bad input, no torch."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO
from fakes import ImageEngine, write_dicom_series
from medsamlite.cli import evaluate as evaluate_cli
from medsamlite.cli import predict as predict_cli
from medsamlite.runtime.npz import CaseError
from medsamlite.runtime.volumes import read_dicom_series, read_nifti, world_to_voxel

pytest.importorskip("pydicom")

BOXES = [[10, 8, 1, 34, 30, 3], [4, 4, 2, 20, 20, 4]]  # voxel (i, j, k) = the task's (x, y, z)
# flipped, scaled and shifted: every axis of voxel space maps to another direction and size in world space
FLIPPED = np.array([[0.0, 0.0, 2.5, 3.0], [-0.8, 0.0, 0.0, 10.0], [0.0, 0.7, 0.0, -5.0], [0, 0, 0, 1]])
OBLIQUE = np.array([[0.7071, -0.7071, 0.0, 1.0], [0.6124, 0.6124, -1.25, 2.0], [0.3536, 0.3536, 2.165, 3.0],
                    [0, 0, 0, 1]])


def _volume(shape=(5, 40, 44)) -> np.ndarray:
    """A task volume (z, y, x) with a dark rectangle and a bright disc, so that masks follow the image."""
    rng = np.random.default_rng(0)
    volume = rng.integers(100, 400, shape).astype(np.uint16)
    volume[:, 10:30, 12:34] //= 3
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    volume[:, (yy - 14) ** 2 + (xx - 14) ** 2 < 36] = 900
    return volume


def _nifti(path: Path, data_ijk: np.ndarray, affine: np.ndarray, slice_dim: int | None = None) -> Path:
    image = nib.Nifti1Image(data_ijk, affine)
    image.set_qform(affine, code=1)  # scanner qform, aligned sform: both codes must survive
    if slice_dim is not None:
        image.header.set_dim_info(slice=slice_dim)
    nib.save(image, path)
    return path


def predict(*args: object, engine=None) -> int:
    """`medsamlite predict ARGS` in this process, on the fake engine (no model to load)."""
    parser = argparse.ArgumentParser()
    predict_cli.add_arguments(parser)
    original = predict_cli.load_engine
    predict_cli.load_engine = lambda parsed: engine or ImageEngine()
    try:
        return predict_cli.run(parser.parse_args([str(a) for a in args]))
    finally:
        predict_cli.load_engine = original


def _npz_segs(tmp_path: Path, volume: np.ndarray, boxes) -> np.ndarray:
    """The label map of the task's .npz path for `volume` (z, y, x) and `boxes` (x, y, z)."""
    folder = tmp_path / "npz_in"
    folder.mkdir(exist_ok=True)
    np.savez(folder / "3DBox_MR_0000.npz", imgs=volume, boxes=np.array(boxes, float), spacing=np.ones(3))
    assert predict("-i", folder / "3DBox_MR_0000.npz", "-o", tmp_path / "npz_out") == 0
    with np.load(tmp_path / "npz_out" / "3DBox_MR_0000.npz") as z:
        return z["segs"]


def _world(boxes, affine: np.ndarray) -> list[list[float]]:
    """Voxel boxes to world boxes: the world bounding box of the mapped corners (exact for an unrotated affine)."""
    out = []
    for box in np.array(boxes, float):
        corners = affine[:3, :3] @ np.array([box[:3], box[3:]]).T + affine[:3, 3:]
        out.append([*corners.min(axis=1), *corners.max(axis=1)])
    return out


def test_world_boxes_on_a_flipped_nifti_give_the_npz_label_map_and_keep_the_geometry(tmp_path):
    volume = _volume()
    expected = _npz_segs(tmp_path, volume, BOXES)
    assert expected.any() and not np.array_equal(expected > 0, _npz_segs(tmp_path, volume[:, ::-1].copy(), BOXES) > 0)
    (tmp_path / "in").mkdir()
    path = _nifti(tmp_path / "in" / "case.nii.gz", volume.transpose(2, 1, 0), FLIPPED)
    stored = nib.load(path).affine  # float32 in the header: the affine a reader sees
    (tmp_path / "world.json").write_text(json.dumps({"case.nii.gz": {"boxes": _world(BOXES, stored)}}))
    (tmp_path / "voxel.json").write_text(json.dumps({"case.nii.gz": {"boxes": BOXES}}))
    for space in ("world", "voxel"):
        out = tmp_path / space
        assert predict("-i", tmp_path / "in", "-o", out, "--prompts", tmp_path / f"{space}.json",
                       "--prompt-space", space, "--window", "none") == 0
        written = nib.load(out / "case.nii.gz")
        np.testing.assert_array_equal(np.asarray(written.dataobj).transpose(2, 1, 0), expected, err_msg=space)
        np.testing.assert_array_equal(written.affine, stored)
        header, original = written.header, nib.load(path).header
        codes = (header["qform_code"], header["sform_code"])
        assert codes == (original["qform_code"], original["sform_code"]) == (1, 2)
        np.testing.assert_array_equal(header["pixdim"], original["pixdim"])
        assert written.get_data_dtype() == np.uint8


def test_an_oblique_nifti_keeps_its_affine_and_its_world_boxes_cover_the_rotated_box(tmp_path):
    path = _nifti(tmp_path / "oblique.nii", _volume().transpose(2, 1, 0), OBLIQUE)
    volume = read_nifti(path)
    voxel = world_to_voxel(np.array(_world(BOXES[:1], volume.affine)), volume.affine)[0]
    assert (voxel[:3] <= np.array(BOXES[0][:3]) + 1e-4).all() and (voxel[3:] >= np.array(BOXES[0][3:]) - 1e-4).all()
    (tmp_path / "p.json").write_text(json.dumps({"oblique.nii": {"boxes": BOXES}}))
    assert predict("-i", path, "-o", tmp_path / "out", "--prompts", tmp_path / "p.json") == 0
    written = nib.load(tmp_path / "out" / "oblique.nii.gz")  # the input's name, as .nii.gz
    np.testing.assert_array_equal(written.affine, volume.affine)
    assert written.shape == volume.data.shape


@pytest.mark.parametrize("slice_dim", [None, 1])
def test_a_sagittal_volume_is_propagated_along_its_own_slice_axis(tmp_path, slice_dim):
    """i is the coarsest axis (3 mm, a sagittal stack): slices are j-k planes, as the .npz of that stack gives."""
    stack = _volume((6, 40, 44))  # (slice, rows, columns)
    axis = 0 if slice_dim is None else slice_dim
    rest = [a for a in range(3) if a != axis]  # stored as: slices along `axis`, columns the lower other axis
    data = np.moveaxis(stack, (0, 1, 2), (axis, rest[1], rest[0]))
    path = _nifti(tmp_path / "sag.nii.gz", data, np.diag([3.0, 0.8, 0.8, 1.0]), slice_dim)
    assert read_nifti(path).slice_axis == axis
    task_boxes = [[10, 8, 1, 34, 30, 3], [4, 4, 2, 20, 20, 5]]  # (column, row, slice)
    voxel_boxes = []
    for col, row, sl, col1, row1, sl1 in task_boxes:
        lo, hi = [0.0] * 3, [0.0] * 3
        lo[rest[0]], lo[rest[1]], lo[axis], hi[rest[0]], hi[rest[1]], hi[axis] = col, row, sl, col1, row1, sl1
        voxel_boxes.append(lo + hi)
    expected = _npz_segs(tmp_path, stack, task_boxes)
    (tmp_path / "p.json").write_text(json.dumps({"sag.nii.gz": {"boxes": voxel_boxes}}))
    assert predict("-i", path, "-o", tmp_path / "out", "--prompts", tmp_path / "p.json", "--window", "none") == 0
    segs = np.asarray(nib.load(tmp_path / "out" / "sag.nii.gz").dataobj)
    np.testing.assert_array_equal(np.moveaxis(segs, (axis, rest[1], rest[0]), (0, 1, 2)), expected)


def test_a_dicom_series_round_trips_to_the_npz_label_map_with_its_geometry(tmp_path):
    volume = _volume()
    write_dicom_series(tmp_path / "in" / "series1", volume, origin=(-20.0, 10.0, 5.0))
    expected = _npz_segs(tmp_path, volume, BOXES)
    (tmp_path / "p.json").write_text(json.dumps({"series1": {"boxes": BOXES}}))
    assert predict("-i", tmp_path / "in", "-o", tmp_path / "out", "--prompts", tmp_path / "p.json",
                   "--window", "none") == 0
    written = nib.load(tmp_path / "out" / "series1.nii.gz")
    np.testing.assert_array_equal(np.asarray(written.dataobj).transpose(2, 1, 0), expected)
    # voxel (i, j, k) = (column, row, slice) lands where DICOM put it: LPS origin + offsets, in RAS
    for ijk in ([0, 0, 0], [43, 0, 0], [0, 39, 4]):
        lps = np.array([-20.0, 10.0, 5.0]) + np.array([ijk[0] * 0.7, ijk[1] * 0.8, ijk[2] * 2.5])
        np.testing.assert_allclose(written.affine @ [*ijk, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-4)
    assert (written.header["qform_code"], written.header["sform_code"]) == (1, 1)


def test_pydicoms_bundled_ct_slice_reads_as_a_one_slice_series(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    source = get_testdata_file("CT_small.dcm")
    (tmp_path / "ct").mkdir()
    (tmp_path / "ct" / "slice.dcm").write_bytes(Path(source).read_bytes())
    volume = read_dicom_series(tmp_path / "ct")
    ds = pydicom.dcmread(source)
    assert volume.data.shape == (ds.Columns, ds.Rows, 1) and volume.modality == "CT"
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(volume.data[:, :, 0].T, hounsfield)


def test_bad_inputs_get_one_line_each_and_exit_1_while_the_others_run(tmp_path, capsys):
    volume = _volume()
    src = tmp_path / "in"
    src.mkdir()
    data = volume.transpose(2, 1, 0)
    for name in ("good.nii.gz", "outside.nii.gz", "nobox.nii.gz", "unprompted.nii.gz"):
        _nifti(src / name, data, np.eye(4))
    nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), np.eye(4)), src / "fourd.nii.gz")
    (src / "truncated.nii.gz").write_bytes((src / "good.nii.gz").read_bytes()[:300])
    write_dicom_series(src / "gap", volume, slices=[0, 1, 3, 4])
    write_dicom_series(src / "two", volume[:2], series_uid="1.2.3.1")
    for path in write_dicom_series(tmp_path / "other", volume[:2], series_uid="1.2.3.2", origin=(0.0, 0.0, 50.0)):
        path.rename(src / "two" / f"other_{path.name}")
    prompts = {name: {"boxes": BOXES} for name in ("good.nii.gz", "fourd.nii.gz", "truncated.nii.gz", "gap", "two")}
    prompts["outside.nii.gz"] = {"boxes": [[100, 100, 0, 120, 120, 2]]}
    prompts["nobox.nii.gz"] = {"boxes": [BOXES[0], []]}
    prompts["../escape.nii.gz"] = {"boxes": BOXES}
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    capsys.readouterr()
    assert predict("-i", src, "-o", tmp_path / "out", "--prompts", tmp_path / "p.json") == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    expected = {"fourd.nii.gz": "expected one 3D volume", "truncated.nii.gz": "cannot be read as NIfTI",
                "gap": "a missing slice", "two": "expected one series per folder", "outside.nii.gz": "wholly outside",
                "nobox.nii.gz": "label 2 has no box", "unprompted.nii.gz": "is missing"}
    for name, text in expected.items():
        assert sum(name in line and text in line for line in errors) == 1, (name, err)
    assert "'../escape.nii.gz' names no input" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz", "run.json", "timings.csv"]
    assert not (tmp_path / "escape.nii.gz").exists()


def test_prompts_that_are_not_json_stop_the_run_before_it_starts(tmp_path, capsys):
    _nifti(tmp_path / "a.nii.gz", _volume().transpose(2, 1, 0), np.eye(4))
    (tmp_path / "p.json").write_bytes(b"\xff{not json")
    assert predict("-i", tmp_path / "a.nii.gz", "-o", tmp_path / "out", "--prompts", tmp_path / "p.json") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'p.json'}: cannot be read as JSON")
    assert not (tmp_path / "out").exists()
    assert predict("-i", tmp_path / "a.nii.gz", "-o", tmp_path / "out") == 1
    assert "needs --prompts" in capsys.readouterr().err


def test_evaluate_scores_nifti_with_the_headers_spacing(tmp_path):
    from medsamlite.runtime.metrics import evaluate_case

    gts = np.zeros((20, 16, 6), np.uint8)
    gts[4:14, 3:11, 1:5] = 1
    segs = np.roll(gts, 2, axis=0)
    affine = np.diag([0.5, 0.5, 3.0, 1.0])
    (tmp_path / "gts").mkdir()
    (tmp_path / "segs").mkdir()
    nib.save(nib.Nifti1Image(gts, affine), tmp_path / "gts" / "CT_case.nii.gz")
    nib.save(nib.Nifti1Image(segs, affine), tmp_path / "segs" / "CT_case.nii.gz")
    nib.save(nib.Nifti1Image(segs, np.diag([0.5, 0.5, 2.0, 1.0])), tmp_path / "segs" / "CT_moved.nii.gz")
    nib.save(nib.Nifti1Image(gts, affine), tmp_path / "gts" / "CT_moved.nii.gz")
    parser = argparse.ArgumentParser()
    evaluate_cli.add_arguments(parser)
    code = evaluate_cli.run(parser.parse_args(["--segs", str(tmp_path / "segs"), "--gts", str(tmp_path / "gts")]))
    assert code == 1  # the case in another geometry failed; the other is scored
    rows = (tmp_path / "segs" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("CT_case,CT,")
    expected = evaluate_case(segs, gts, (0.5, 0.5, 3.0))
    assert expected.mean_nsd != evaluate_case(segs, gts, (3.0, 0.5, 0.5)).mean_nsd  # the axis order matters
    dsc, nsd = (float(v) for v in rows[1].split(",")[3:5])
    assert (dsc, nsd) == pytest.approx((expected.mean_dsc, expected.mean_nsd))
    assert "ground truth header's pixdim" in (tmp_path / "segs" / "summary.md").read_text()


def test_a_dicom_series_predicts_and_evaluates_in_a_process_without_torch(tmp_path):
    """The runtime-only install: torch, scipy and the rest cannot be imported; an exported folder opens as a fake."""
    volume = _volume()
    write_dicom_series(tmp_path / "in" / "series1", volume)
    (tmp_path / "p.json").write_text(json.dumps({"series1": {"boxes": BOXES}}))
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "config.json").write_text('{"format": "medsamlite-compiled"}')
    script = textwrap.dedent(f"""
        import sys
        HEAVY = ("torch", "torchvision", "timm", "peft", "monai", "scipy", "accelerate", "nncf", "matplotlib")

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in HEAVY:
                    raise ImportError(f"blocked: {{name}}")

        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(REPO / 'tests')!r})
        from fakes import ImageEngine
        import medsamlite.runtime.compiled
        from medsamlite.cli import main
        medsamlite.runtime.compiled.load = lambda path, **kw: ImageEngine()
        out = {str(tmp_path / 'out')!r}
        code = main(["predict", "-i", {str(tmp_path / 'in')!r}, "-o", out, "--model", {str(exported)!r},
                     "--prompts", {str(tmp_path / 'p.json')!r}])
        import nibabel, shutil, os
        os.makedirs({str(tmp_path / 'gts')!r})
        shutil.copy(out + "/series1.nii.gz", {str(tmp_path / 'gts')!r})
        code2 = main(["evaluate", "--segs", out, "--gts", {str(tmp_path / 'gts')!r}])
        print("CODES", code, code2, "HEAVY", sorted(m for m in HEAVY if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "CODES 0 0 HEAVY []" in out.stdout, out.stdout + out.stderr
    assert "| all | 1 | 1.0000 | 1.0000 |" in out.stdout


def test_reader_errors_name_the_file(tmp_path):
    (tmp_path / "x.nii").write_bytes(b"\0" * 100)
    with pytest.raises(CaseError, match=f"^{tmp_path / 'x.nii'}: "):
        read_nifti(tmp_path / "x.nii")
