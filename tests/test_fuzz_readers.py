"""Every reader of user files, fuzzed (hypothesis): the task's .npz, NIfTI, DICOM series and prompts.json.

Mutated and random inputs (truncated files, flipped bytes, wrong dtypes and shapes, NaN/inf, huge dimensions in
a header, non-UTF-8 names, prompt keys that point outside the input folder) must end in a result or in the
one-line `CaseError` naming the file: never another exception, nor a file written outside the output folder.
CI runs the `ci` profile (tests/conftest.py: few examples, fixed seed); a longer hunt:
`pytest tests/test_fuzz_readers.py --hypothesis-profile long --hypothesis-show-statistics` (stop it when you like).
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
nib = pytest.importorskip("nibabel")
pytest.importorskip("pydicom")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fakes import BoxEngine, write_dicom_series  # noqa: E402
from medsamlite.cli import predict as predict_cli  # noqa: E402
from medsamlite.runtime.npz import CaseError, read_case  # noqa: E402
from medsamlite.runtime.volumes import (MAX_VOXELS, Volume, case_boxes, read_dicom_series, read_nifti,  # noqa: E402
                                        read_prompts, voxel_boxes)

# fixtures made per example live in pytest's tmp_path, reused across examples: hypothesis allows that here
REUSED_TMP = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
HUGE = st.sampled_from([0, -1, 1, 2, 3, 4, 7, 255, 32767, -32768, 65535, 2 ** 31 - 1, 2 ** 31, 2 ** 63 - 1])
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, -1.0, 1e30]))


def check_outcome(read, path: Path):
    """`read(path)` returns, or raises a one-line CaseError that names `path`; anything else fails the test."""
    try:
        return read(path)
    except CaseError as error:
        message = str(error)
        assert "\n" not in message and message.startswith(str(path)), message
        return None


def mutate(data: bytes, draw) -> bytes:
    """Truncate, overwrite or insert bytes, one to three times."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "overwrite", "insert"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "truncate":
            del data[at:]
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at:at + len(chunk)] = chunk
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


# the task's .npz --------------------------------------------------------------------------------------------

DTYPES = ["uint8", "int16", "uint16", "float32", "float64", "bool", "complex64", "int64", "U3"]


@st.composite
def npz_bytes(draw) -> bytes:
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim)))
    imgs = np.zeros(shape, draw(st.sampled_from(DTYPES)))
    if imgs.dtype.kind == "f" and imgs.size:
        imgs.flat[0] = draw(FLOATS)
    width = draw(st.sampled_from([0, 4, 6, 5]))
    boxes = np.array(draw(st.lists(st.lists(FLOATS, min_size=width, max_size=width), max_size=3)), np.float64)
    buffer = io.BytesIO()
    np.savez(buffer, imgs=imgs, boxes=boxes)
    data = buffer.getvalue()
    return mutate(data, draw) if draw(st.booleans()) else data


@REUSED_TMP
@given(data=npz_bytes(), name=st.sampled_from(["3DBox_CT_0.npz", "2DBox_US_0.npz", "case.npz"]))
def test_the_npz_reader_returns_a_case_or_one_line(tmp_path, data, name):
    path = tmp_path / name
    path.write_bytes(data)
    case = check_outcome(read_case, path)
    if case is not None:
        assert case.kind in ("2D", "3D") and np.isfinite(case.boxes).all()


# found by the soak profile (2026-12-07): a member flagged as encrypted made zipfile raise RuntimeError
ENCRYPTED_MEMBER = b"PK\x03\x04-\x00\x00\x00\x00\x00\x00\x00!\x00\x8d\xcax\xdb\xff\xff\xff\xff\xff\xff\xff\xff\x08\x00\x14\x00imgs.npy\x01\x00\x10\x00\x86\x00\x00\x00\x00\x00\x00\x00\x86\x00\x00\x00\x00\x00\x00\x00\x93NUMPY\x01\x00v\x00{'descr': '<i2', 'fortran_order': False, 'shape': (3,), }                                                            \n\x00\x00\x00\x00\x00\x00PK\x03\x04-\x00\x00\x00\x00\x00\x00\x00!\x006H[s\xff\xff\xff\xff\xff\xff\xff\xff\t\x00\x14\x00boxes.npy\x01\x00\x10\x00\x80\x00\x00\x00\x00\x00\x00\x00\x80\x00\x00\x00\x00\x00\x00\x00\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (0,), }                                                            \nPK\x01\x02-\x03-\x00\x00\x00\x00\x00\x00\x00!\x00\x8d\xcax\xdb\x86\x00\x00\x00\x86\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80\x01\x00\x00\x00\x00imgs.npyPK\x01\x02-\x03-\x00\x01\x00\x00\x00\x00\x00!\x006H[s\x80\x00\x00\x00\x80\x00\x00\x00\t\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80\x01\xc0\x00\x00\x00boxes.npyPK\x05\x06\x00\x00\x00\x00\x02\x00\x02\x00m\x00\x00\x00{\x01\x00\x00\x00\x00"


def test_an_npz_with_an_encrypted_member_is_one_line(tmp_path):
    path = tmp_path / "3DBox_CT_0.npz"
    path.write_bytes(ENCRYPTED_MEMBER)
    assert check_outcome(read_case, path) is None


def test_a_dicom_rescale_slope_that_is_not_a_number_is_one_line(tmp_path):
    """Found by the soak profile (2026-12-07): a garbled RescaleSlope made float() raise outside the reader's checks."""
    files = write_dicom_series(tmp_path / "series", np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5))
    raw = files[1].read_bytes()
    at = raw.index(b"DS", raw.index(b"\x28\x00\x53\x10"))  # (0028,1053) RescaleSlope, explicit VR "DS"
    length = int.from_bytes(raw[at + 2:at + 4], "little")
    files[1].write_bytes(raw[:at + 4] + b"\x00" + raw[at + 5:at + 4 + length] + raw[at + 4 + length:])
    assert check_outcome(read_dicom_series, tmp_path / "series") is None


def test_a_series_uid_holding_a_newline_is_named_in_one_line(tmp_path):
    """Found by the soak profile (2026-12-07): a garbled SeriesInstanceUID put a line break into the message."""
    files = write_dicom_series(tmp_path / "series", np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5))
    raw = files[1].read_bytes()
    at = raw.index(b"\x20\x00\x0e\x00UI") + 8  # (0020,000E) SeriesInstanceUID's value, explicit VR "UI"
    files[1].write_bytes(raw[:at + 1] + b"\n" + raw[at + 2:])
    assert check_outcome(read_dicom_series, tmp_path / "series") is None


def _npy_with_shape(shape: tuple[int, ...]) -> bytes:
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + b"\0" * 64


@REUSED_TMP
@given(shape=st.lists(st.sampled_from([1, 3, 1 << 16, 1 << 31, 1 << 40]), min_size=2, max_size=3))
def test_the_npz_reader_refuses_huge_dimensions_in_a_header_without_allocating_them(tmp_path, shape):
    import zipfile

    path = tmp_path / "3DBox_CT_huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("imgs.npy", _npy_with_shape(tuple(shape)))
        buffer = io.BytesIO()
        np.save(buffer, np.array([[0, 0, 0, 1, 1, 0]], np.float64))
        archive.writestr("boxes.npy", buffer.getvalue())
    check_outcome(read_case, path)


# NIfTI ------------------------------------------------------------------------------------------------------

# (offset, struct format) of NIfTI-1 header fields worth breaking
NIFTI_FIELDS = {"sizeof_hdr": (0, "<i"), "dim0": (40, "<h"), "dim1": (42, "<h"), "dim3": (46, "<h"),
                "dim4": (48, "<h"), "datatype": (70, "<h"), "bitpix": (72, "<h"), "pixdim1": (80, "<f"),
                "vox_offset": (108, "<f"), "scl_slope": (112, "<f"), "qform_code": (252, "<h"),
                "sform_code": (254, "<h"), "srow_x0": (280, "<f"), "quatern_b": (256, "<f"), "dim_info": (39, "<B")}


def _base_nifti(dtype: str, shape: tuple[int, ...], value: float) -> bytes:
    data = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape).astype(dtype)
    if data.dtype.kind == "f":
        data.flat[0] = value
    return nib.Nifti1Image(data, np.diag([0.5, -0.7, 2.0, 1.0]), dtype=data.dtype).to_bytes()


@st.composite
def nifti_bytes(draw) -> bytes:
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=2, max_size=5)))
    dtype = draw(st.sampled_from(["uint8", "int16", "float32", "float64", "int64", "complex64"]))
    data = bytearray(_base_nifti(dtype, shape, draw(FLOATS)))
    for _ in range(draw(st.integers(0, 3))):
        offset, fmt = NIFTI_FIELDS[draw(st.sampled_from(sorted(NIFTI_FIELDS)))]
        value = draw(FLOATS) if fmt.endswith("f") else draw(HUGE)
        try:
            struct.pack_into(fmt, data, offset, value)
        except struct.error:  # out of the field's range: the field keeps its value
            pass
    data = bytes(data)
    return mutate(data, draw) if draw(st.booleans()) else data


@REUSED_TMP
@given(data=nifti_bytes(), compressed=st.booleans())
def test_the_nifti_reader_returns_a_volume_or_one_line(tmp_path, data, compressed):
    path = tmp_path / ("case.nii.gz" if compressed else "case.nii")
    path.write_bytes(gzip.compress(data, compresslevel=1) if compressed else data)
    volume = check_outcome(read_nifti, path)
    if volume is not None:
        assert volume.data.ndim == 3 and volume.data.size <= MAX_VOXELS and volume.slice_axis in (0, 1, 2)
        assert np.isfinite(volume.affine).all() and np.isfinite(volume.spacing).all()


def test_a_header_declaring_a_huge_volume_is_refused_before_allocating_it(tmp_path):
    """32767^3 voxels in a 400-byte file (the allocation would be 280 TB), compressed or not."""
    data = bytearray(_base_nifti("float64", (2, 2, 2), 0.0))
    struct.pack_into("<hhh", data, 42, 32767, 32767, 32767)
    for name, payload in (("huge.nii", bytes(data)), ("huge.nii.gz", gzip.compress(bytes(data)))):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(CaseError, match="voxels; expected at most"):
            read_nifti(tmp_path / name)
    struct.pack_into("<hhh", data, 42, 600, 600, 600)  # under the cap, but not in the file
    (tmp_path / "big.nii.gz").write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(CaseError, match="truncated, or a corrupt header"):
        read_nifti(tmp_path / "big.nii.gz")


# DICOM series -----------------------------------------------------------------------------------------------

TAG_VALUES = {
    "Rows": HUGE, "Columns": HUGE, "BitsAllocated": st.sampled_from([1, 8, 12, 16, 32, 64]),
    "SamplesPerPixel": st.sampled_from([1, 3]), "NumberOfFrames": st.sampled_from([1, 2, 0]),
    "PixelRepresentation": st.sampled_from([0, 1]), "RescaleSlope": FLOATS, "RescaleIntercept": FLOATS,
    "PixelSpacing": st.lists(FLOATS, min_size=0, max_size=3),
    "ImagePositionPatient": st.lists(FLOATS, min_size=0, max_size=4),
    "ImageOrientationPatient": st.lists(FLOATS, min_size=0, max_size=7),
    "SeriesInstanceUID": st.sampled_from(["1.2.3", "1.2.4", ""]),
    "PhotometricInterpretation": st.sampled_from(["MONOCHROME2", "RGB", "PALETTE COLOR"]),
}


@st.composite
def dicom_edits(draw) -> list[tuple[int, str, object]]:
    """(slice, tag, value) edits of a three-slice series."""
    return draw(st.lists(st.sampled_from(sorted(TAG_VALUES)).flatmap(
        lambda tag: st.tuples(st.integers(0, 2), st.just(tag), TAG_VALUES[tag])), max_size=3))


@REUSED_TMP
@given(edits=dicom_edits(), garble=st.booleans(), data=st.data())
def test_the_dicom_reader_returns_a_volume_or_one_line(tmp_path, edits, garble, data):
    import pydicom

    folder = tmp_path / "series"
    for old in folder.glob("*") if folder.exists() else ():
        old.unlink()
    files = write_dicom_series(folder, np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5))
    for index, tag, value in edits:
        ds = pydicom.dcmread(files[index])
        try:
            setattr(ds, tag, value)
            ds.save_as(files[index])
        except Exception:  # pydicom refuses to write the value: the file keeps it
            pass
    if garble:
        target = files[data.draw(st.integers(0, 2))]
        target.write_bytes(mutate(target.read_bytes(), data.draw))
    volume = check_outcome(read_dicom_series, folder)
    if volume is not None:
        assert volume.data.ndim == 3 and np.isfinite(volume.affine).all()


# prompts.json -----------------------------------------------------------------------------------------------

NAMES = st.sampled_from(["case.nii.gz", "../case.nii.gz", "/etc/passwd", "sub/case.nii.gz", "", ".", "..",
                         "case\x00.nii.gz", "caf\udcff.nii.gz"])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.just(10 ** 400) | FLOATS | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=7) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=20)
BOX = st.lists(st.one_of(st.floats(-100, 100), st.integers(-100, 100), st.just(10 ** 400), FLOATS, st.none(),
                         st.text(max_size=2)),
               min_size=0, max_size=7)


@st.composite
def prompts_bytes(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=40))  # not JSON, not UTF-8
    entry = draw(st.one_of(JSON, st.fixed_dictionaries({"boxes": st.one_of(JSON, st.lists(BOX, max_size=4))})))
    value = draw(st.one_of(st.dictionaries(NAMES, st.just(entry), max_size=3), JSON))
    return json.dumps(value).encode("utf-8", "surrogatepass")


@REUSED_TMP
@given(data=prompts_bytes(), space=st.sampled_from(["voxel", "world"]))
def test_the_prompts_reader_returns_boxes_or_one_line(tmp_path, data, space):
    path = tmp_path / "prompts.json"
    path.write_bytes(data)
    prompts = check_outcome(read_prompts, path)
    if prompts is None:
        return
    volume = Volume(Path("case.nii.gz"), np.zeros((8, 6, 4), np.uint8), np.diag([-0.5, 0.7, 3.0, 1.0]), "CT")
    try:
        boxes = case_boxes(prompts, "case.nii.gz", path)
        boxes, _ = voxel_boxes(boxes, volume, space, str(path))
    except CaseError as error:
        assert "\n" not in str(error) and str(error).startswith(str(path))
        return
    assert boxes.shape[1] == 6 and np.isfinite(boxes).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 3:5] <= [8, 6]).all() and (boxes[:, [2, 5]] <= 3).all()


@REUSED_TMP
@given(keys=st.lists(NAMES, min_size=1, max_size=3), raw_name=st.sampled_from([b"case.nii.gz", b"caf\xff.nii.gz"]))
def test_predict_writes_only_into_its_output_folder_whatever_the_prompts_name(tmp_path, keys, raw_name):
    """Prompt keys with folders, '..' or absolute paths, and inputs with non-UTF-8 names: outputs stay in -o."""
    root = tmp_path / "run"
    if root.exists():
        import shutil

        shutil.rmtree(root)
    (root / "in").mkdir(parents=True)
    name = os.fsdecode(raw_name)
    nib.save(nib.Nifti1Image(np.arange(240, dtype=np.uint8).reshape(6, 5, 8), np.eye(4)), root / "in" / name)
    (root / "p.json").write_text(json.dumps({k: {"boxes": [[0, 0, 0, 4, 4, 7]]} for k in [*keys, name]},
                                            ensure_ascii=True))
    parser = argparse.ArgumentParser()
    predict_cli.add_arguments(parser)
    original, predict_cli.load_engine = predict_cli.load_engine, lambda args: BoxEngine()
    try:
        code = predict_cli.run(parser.parse_args(["-i", str(root / "in"), "-o", str(root / "out"),
                                                  "--prompts", str(root / "p.json")]))
    finally:
        predict_cli.load_engine = original
    assert code == 0
    written = {p.relative_to(root) for p in root.rglob("*")} - {Path("in"), Path("in") / name, Path("p.json")}
    assert written == {Path("out"), Path("out") / "run.json", Path("out") / "timings.csv",
                       Path("out") / (name[:-7] + ".nii.gz")}
