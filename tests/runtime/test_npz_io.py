"""Task `.npz` I/O: every bad-input case through `read_case`, `predict_file` and `medsamlite predict`.

A fake engine (mask = box) stands in for the model: these tests are about validation, I/O and control flow.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medsamlite.runtime import CaseError, Predictor, read_case, write_segs
from medsamlite.cli import predict as predict_cli

from fakes import BoxEngine

IMG2D = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
IMG3D = np.random.default_rng(1).integers(0, 256, (6, 30, 40), dtype=np.uint8)
BOX2D = np.array([[5, 5, 30, 30], [20, 10, 55, 35]])
BOX3D = np.array([[3, 3, 1, 20, 20, 4]])


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _single_array(path: Path) -> Path:
    with path.open("wb") as f:
        np.save(f, IMG2D)
    return path


def _truncated(path: Path) -> Path:
    np.savez_compressed(path, imgs=IMG2D, boxes=BOX2D)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _corrupt_member(path: Path) -> Path:
    """A valid zip directory whose 'imgs' member has flipped bytes (the CRC or inflate fails on read)."""
    np.savez_compressed(path, imgs=IMG2D, boxes=BOX2D)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("imgs.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 40
    data[start:start + 200] = bytes(200)
    path.write_bytes(bytes(data))
    return path


# name -> (builder(folder) -> path, substring the error must contain)
BAD_CASES = {
    "garbage": (lambda d: _write(d / "2DBox_garbage.npz", b"not a zip at all" * 10), "cannot be read as .npz"),
    "truncated": (lambda d: _truncated(d / "2DBox_truncated.npz"), "cannot be read as .npz"),
    "corrupt_member": (lambda d: _corrupt_member(d / "2DBox_corrupt.npz"), "key 'imgs' is truncated or corrupt"),
    "single_array": (lambda d: _single_array(d / "2DBox_npy.npz"), "not an .npz archive"),
    "missing_imgs": (lambda d: _save(d / "2DBox_noimgs.npz", boxes=BOX2D), "missing key 'imgs'"),
    "missing_boxes": (lambda d: _save(d / "3DBox_noboxes.npz", imgs=IMG3D), "missing key 'boxes'"),
    "object_array": (lambda d: _save(d / "2DBox_object.npz", imgs=np.array([IMG2D, None], dtype=object), boxes=BOX2D),
                     "cannot be read without pickle"),
    "imgs_rank": (lambda d: _save(d / "2DBox_rank.npz", imgs=IMG2D[0, :, 0], boxes=BOX2D), "expected (H, W, 3)"),
    "imgs_rank_3d": (lambda d: _save(d / "3DBox_rank.npz", imgs=IMG3D[..., None], boxes=BOX3D), "expected (D, H, W)"),
    "imgs_channels": (lambda d: _save(d / "2DBox_rgba.npz", imgs=np.zeros((40, 60, 4), np.uint8), boxes=BOX2D),
                      "expected (H, W, 3)"),
    "imgs_dtype": (lambda d: _save(d / "2DBox_complex.npz", imgs=IMG2D.astype(np.complex64), boxes=BOX2D),
                   "dtype complex64"),
    "imgs_bool": (lambda d: _save(d / "2DBox_bool.npz", imgs=IMG2D > 100, boxes=BOX2D), "dtype bool"),
    "imgs_empty": (lambda d: _save(d / "2DBox_empty.npz", imgs=np.zeros((0, 60, 3), np.uint8), boxes=BOX2D),
                   "no empty axis"),
    "imgs_nan": (lambda d: _save(d / "3DBox_nan.npz", imgs=np.where(IMG3D > 250, np.nan, IMG3D.astype(np.float32)),
                                 boxes=BOX3D), "NaN/inf"),
    "imgs_inf": (lambda d: _save(d / "2DBox_inf.npz", imgs=np.full((40, 60), np.inf), boxes=BOX2D), "NaN/inf"),
    "boxes_width": (lambda d: _save(d / "2DBox_w5.npz", imgs=IMG2D, boxes=np.zeros((2, 5))), "expected (N, 4)"),
    "boxes_rank": (lambda d: _save(d / "2DBox_flat.npz", imgs=IMG2D, boxes=BOX2D[0]), "expected (N, 4)"),
    "boxes_dtype": (lambda d: _save(d / "2DBox_strbox.npz", imgs=IMG2D, boxes=np.array([["a", "b", "c", "d"]])),
                    "expected numbers"),
    "boxes_nan": (lambda d: _save(d / "2DBox_nanbox.npz", imgs=IMG2D, boxes=np.array([[1, 2, np.nan, 9.0]])),
                  "expected finite"),
    "box_empty": (lambda d: _save(d / "2DBox_flatbox.npz", imgs=IMG2D, boxes=np.array([[5, 5, 30, 30], [7, 9, 7, 20]])),
                  "row 1 [7.0, 9.0, 7.0, 20.0] is empty or inverted"),
    "box_inverted": (lambda d: _save(d / "2DBox_inv.npz", imgs=IMG2D, boxes=np.array([[30, 5, 5, 30]])),
                     "empty or inverted"),
    "box_inverted_z": (lambda d: _save(d / "3DBox_invz.npz", imgs=IMG3D, boxes=np.array([[3, 3, 4, 20, 20, 1]])),
                       "z_min <= z_max"),
    "box_outside": (lambda d: _save(d / "2DBox_out.npz", imgs=IMG2D, boxes=np.array([[5, 5, 30, 30], [70, 5, 90, 30]])),
                    "wholly outside"),
    "box_outside_z": (lambda d: _save(d / "3DBox_outz.npz", imgs=IMG3D, boxes=np.array([[3, 3, 6, 20, 20, 9]])),
                      "wholly outside"),
    "too_many_boxes": (lambda d: _save(d / "2DBox_many.npz", imgs=IMG2D, boxes=np.tile([[1, 1, 9, 9]], (65536, 1))),
                       "at most 65535"),
    "name_mismatch": (lambda d: _save(d / "3DBox_is2d.npz", imgs=IMG2D, boxes=BOX2D), "file name says 3D"),
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    return {name: build(folder) for name, (build, _) in BAD_CASES.items()}


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_read_case_rejects_with_a_one_line_error_naming_the_file(bad_dir, name):
    path = bad_dir[name]
    with pytest.raises(CaseError) as info:
        read_case(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert BAD_CASES[name][1] in message


@pytest.mark.parametrize("name", ["garbage", "missing_boxes", "imgs_nan", "box_outside", "name_mismatch"])
def test_predict_file_rejects_and_writes_nothing(bad_dir, name, tmp_path):
    engine = BoxEngine()
    with pytest.raises(CaseError, match=BAD_CASES[name][1].replace("(", r"\(").replace(")", r"\)")):
        Predictor(engine).predict_file(bad_dir[name], tmp_path / bad_dir[name].name)
    assert list(tmp_path.iterdir()) == [] and engine.encode_calls == 0


def test_read_case_good_2d_3d_and_kind_detection(tmp_path):
    case = read_case(_save(tmp_path / "2DBox_ok.npz", imgs=IMG2D, boxes=BOX2D))
    assert case.kind == "2D" and case.boxes.dtype == np.float64 and not case.warnings
    case = read_case(_save(tmp_path / "3DBox_ok.npz", imgs=IMG3D, boxes=BOX3D, spacing=np.array([1.0, 0.8, 0.8])))
    assert case.kind == "3D" and case.spacing is not None and not case.warnings
    assert read_case(_save(tmp_path / "noprefix.npz", imgs=IMG3D, boxes=BOX3D)).kind == "3D"
    assert read_case(_save(tmp_path / "grey.npz", imgs=IMG2D[..., 0], boxes=BOX2D)).kind == "2D"
    # zero boxes: the file name decides, else the image's shape
    assert read_case(_save(tmp_path / "3DBox_none.npz", imgs=IMG3D, boxes=np.zeros((0,)))).kind == "3D"
    assert read_case(_save(tmp_path / "none.npz", imgs=IMG2D, boxes=np.zeros((0,)))).kind == "2D"
    one_slice = read_case(_save(tmp_path / "3DBox_z.npz", imgs=IMG3D, boxes=np.array([[3, 3, 2, 20, 20, 2]])))
    assert one_slice.boxes[0, 2] == one_slice.boxes[0, 5] == 2


def test_partly_outside_boxes_are_clipped_and_warned(tmp_path):
    case = read_case(_save(tmp_path / "3DBox_clip.npz", imgs=IMG3D, boxes=np.array([[-4, 3, -2, 50, 20, 8]])))
    np.testing.assert_array_equal(case.boxes, [[0, 3, 0, 40, 20, 5]])
    assert len(case.warnings) == 1 and "clipped to [0.0, 3.0, 0.0, 40.0, 20.0, 5.0]" in case.warnings[0]
    edge = read_case(_save(tmp_path / "2DBox_edge.npz", imgs=IMG2D, boxes=np.array([[0, 0, 60, 40]])))
    assert not edge.warnings  # a box up to the image's far edge is inside


def test_malformed_spacing_is_only_a_warning(tmp_path):
    case = read_case(_save(tmp_path / "3DBox_sp.npz", imgs=IMG3D, boxes=BOX3D, spacing=np.array([1.0, -1, np.nan])))
    assert case.kind == "3D" and "key 'spacing'" in case.warnings[0]


def test_write_segs_is_atomic_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    out = write_segs(tmp_path / "o" / "2DBox_a.npz", np.ones((4, 5), np.uint8))
    with np.load(out) as z:
        assert z.files == ["segs"] and z["segs"].dtype == np.uint8
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # the umask's permissions, not mkstemp's 0600
    before = out.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", fail)
    with pytest.raises(OSError, match="disk full"):
        write_segs(out, np.zeros((4, 5), np.uint8))
    assert out.read_bytes() == before  # the old file is untouched
    assert [p.name for p in out.parent.iterdir()] == ["2DBox_a.npz"]


def test_predict_file_refuses_to_overwrite_its_input(tmp_path):
    path = _save(tmp_path / "2DBox_self.npz", imgs=IMG2D, boxes=BOX2D)
    digest = _sha(path)
    with pytest.raises(CaseError, match="output path is the input file"):
        Predictor(BoxEngine()).predict_file(path, tmp_path / "." / "2DBox_self.npz")
    assert _sha(path) == digest


def test_predict_file_good_cases(tmp_path):
    predictor = Predictor(BoxEngine())
    zero = predictor.predict_file(_save(tmp_path / "2DBox_zero.npz", imgs=IMG2D, boxes=np.zeros((0, 4))),
                                  tmp_path / "out" / "2DBox_zero.npz")
    with np.load(zero.out_path) as z:
        assert z["segs"].shape == (40, 60) and z["segs"].dtype == np.uint8 and not z["segs"].any()
    many = np.array([[i % 50, 0, i % 50 + 9, 40] for i in range(300)])
    result = predictor.predict_file(_save(tmp_path / "2DBox_300.npz", imgs=IMG2D, boxes=many),
                                    tmp_path / "out" / "2DBox_300.npz")
    with np.load(result.out_path) as z:
        assert z["segs"].dtype == np.uint16 and z["segs"].max() == 300
    assert result.boxes == 300 and result.kind == "2D" and result.shape == (40, 60, 3)
    assert set(result.phases) == {"read", "preprocess", "encode", "decode", "postprocess", "write"}
    assert result.seconds >= sum(result.phases.values()) * 0.999


# the CLI ------------------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    """`medsamlite predict ARGS` in this process (the subcommand alone, as `medsamlite.cli` dispatches it)."""
    assert argv[0] == "predict"
    parser = argparse.ArgumentParser(prog="medsamlite predict")
    predict_cli.add_arguments(parser)
    return predict_cli.run(parser.parse_args(argv[1:]))


@pytest.fixture()
def fake_cli(monkeypatch):
    """`medsamlite predict` with the fake engine in place of a model."""
    monkeypatch.setattr(predict_cli, "load_engine", lambda args: BoxEngine())


def test_cli_continues_past_bad_cases_and_exits_1(fake_cli, tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    bad = {name: BAD_CASES[name][0](inp) for name in ("garbage", "truncated", "missing_imgs", "imgs_nan",
                                                         "box_inverted", "box_outside", "too_many_boxes")}
    good = {"2DBox_good.npz": _save(inp / "2DBox_good.npz", imgs=IMG2D, boxes=BOX2D),
            "3DBox_good.npz": _save(inp / "3DBox_good.npz", imgs=IMG3D, boxes=BOX3D),
            "2DBox_zero.npz": _save(inp / "2DBox_zero.npz", imgs=IMG2D, boxes=np.zeros((0, 4))),
            "2DBox_clip.npz": _save(inp / "2DBox_clip.npz", imgs=IMG2D, boxes=np.array([[-5, 5, 30, 99]]))}
    hashes = {p: _sha(p) for p in inp.iterdir()}
    out = tmp_path / "out"
    assert main(["predict", "-i", str(inp), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    for path in bad.values():
        lines = [line for line in err.splitlines() if line.startswith(f"error: {path}")]
        assert len(lines) == 1, err
    assert "warning: " in err and "clipped" in err
    assert f"error: {len(bad)} of {len(bad) + len(good)} cases failed" in err
    assert {p: _sha(p) for p in inp.iterdir()} == hashes  # inputs untouched
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([*good, "run.json", "timings.csv"])  # no partial or temporary files
    with np.load(out / "2DBox_good.npz") as z:
        np.testing.assert_array_equal(z["segs"], Predictor(BoxEngine()).predict_2d(IMG2D, BOX2D))
    with np.load(out / "3DBox_good.npz") as z:
        assert z["segs"].shape == IMG3D.shape and z["segs"].max() == 1
    rows = {r["case"]: r for r in csv.DictReader((out / "timings.csv").open())}
    assert set(rows) == {p.name for p in hashes}
    assert rows["3DBox_good.npz"]["status"] == "ok" and rows["3DBox_good.npz"]["shape"] == "6x30x40"
    assert float(rows["3DBox_good.npz"]["encode"]) > 0 and rows["2DBox_good.npz"]["boxes"] == "2"
    assert all(rows[p.name]["status"] == "error" for p in bad.values())


def test_cli_single_file_and_all_good_exit_0(fake_cli, tmp_path):
    path = _save(tmp_path / "2DBox_one.npz", imgs=IMG2D, boxes=BOX2D)
    assert main(["predict", "-i", str(path), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "2DBox_one.npz").exists()


def test_cli_refuses_output_folder_equal_to_input_folder(fake_cli, tmp_path, capsys):
    path = _save(tmp_path / "2DBox_one.npz", imgs=IMG2D, boxes=BOX2D)
    digest = _sha(path)
    for target in (tmp_path, path):
        assert main(["predict", "-i", str(target), "-o", str(tmp_path / ".")]) == 1
        assert "the output folder is the input folder" in capsys.readouterr().err
    assert _sha(path) == digest and sorted(p.name for p in tmp_path.iterdir()) == ["2DBox_one.npz"]


def test_cli_reports_missing_input_and_empty_folder(fake_cli, tmp_path, capsys):
    assert main(["predict", "-i", str(tmp_path / "nope"), "-o", str(tmp_path / "out")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", "-i", str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 1
    assert "no .npz cases" in capsys.readouterr().err


def test_cli_model_without_weights_is_a_clear_error(tmp_path, capsys):
    path = _save(tmp_path / "2DBox_one.npz", imgs=IMG2D, boxes=BOX2D)
    assert main(["predict", "-i", str(path), "-o", str(tmp_path / "out"), "--model", "no_such_model"]) == 1
    assert "unknown model 'no_such_model'" in capsys.readouterr().err


def test_cli_predictor_options_reach_the_predictor_and_bad_ones_are_one_line_errors(fake_cli, tmp_path, capsys):
    path = _save(tmp_path / "3DBox_one.npz", imgs=IMG3D, boxes=BOX3D)
    assert main(["predict", "-i", str(path), "-o", str(tmp_path / "a"), "--encode-batch", "1"]) == 0
    assert main(["predict", "-i", str(path), "-o", str(tmp_path / "b"), "--encode-batch", "3"]) == 0
    with np.load(tmp_path / "a" / path.name) as a, np.load(tmp_path / "b" / path.name) as b:
        np.testing.assert_array_equal(a["segs"], b["segs"])
    assert main(["predict", "-i", str(path), "-o", str(tmp_path / "c"), "--encode-batch", "0"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "error: encode_batch must be >= 1, got 0"
    assert not (tmp_path / "c" / path.name).exists()
