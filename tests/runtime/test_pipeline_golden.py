"""The whole pipeline against the reference: ../shared/golden/litemedsam/pipeline.npz with its synthetic weights.

The reference `MedSAM_infer_npz_2D` / `_3D` ran on two synthetic cases; our Predictor, with the real
litemedsam model and the same weights, must give the same encoder input, the same decoder prompts on the
same slices (our batching may reorder them) and the same label maps, bit for bit.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import medsamlite
from medsamlite.runtime import Predictor
from medsamlite.torch_engine import TorchEngine
from medsamlite.runtime.preprocess import masks_from_logits, postprocess_logits, preprocess_image, scale_boxes

from conftest import REPO, cache_dir, golden_arrays, golden_state_dict, max_rel_error  # noqa: F401



class Recorder:
    """Wraps an engine and records every call: encoder inputs and outputs, decoder embeddings and boxes."""

    def __init__(self, engine) -> None:
        self.engine, self.config = engine, engine.config
        self.encoded: list[tuple[np.ndarray, np.ndarray]] = []
        self.decoded: list[tuple[str, np.ndarray]] = []

    def encode(self, images: np.ndarray) -> np.ndarray:
        out = self.engine.encode(images)
        self.encoded.append((images.copy(), np.array(out)))
        return out

    def decode(self, embeddings: np.ndarray, boxes: np.ndarray):
        assert len(embeddings) == 1, "the pipeline shares one embedding per decoder call"
        self.decoded.append((_digest(embeddings[0]), boxes.copy()))
        return self.engine.decode(embeddings, boxes)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a, np.float32).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def model():
    model = medsamlite.create_model("litemedsam")
    medsamlite.load_checkpoint(model, golden_state_dict("litemedsam"), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def pipeline() -> dict[str, np.ndarray]:
    return golden_arrays("litemedsam", "pipeline.npz")


def test_2d_case(model, pipeline):
    rec = Recorder(TorchEngine(model))
    segs = Predictor(rec).predict_2d(pipeline["case2d_imgs"], pipeline["case2d_boxes"])
    assert len(rec.encoded) == 1
    error = np.abs(rec.encoded[0][0] - pipeline["case2d_encoder_input"]).max()
    assert error <= 1e-5, f"encoder input max abs error {error}"
    calls = pipeline["case2d_decoder_calls"]
    ours = sorted(tuple(b) for _, boxes in rec.decoded for b in boxes.tolist())
    assert ours == sorted(tuple(b) for b in calls[:, :4].tolist())
    assert len(rec.decoded) == 1  # both boxes in one decoder call
    np.testing.assert_array_equal(segs, pipeline["case2d_segs"])
    assert segs.dtype == np.uint8


def _reference_slices(boxes: np.ndarray, depth: int) -> list[int]:
    """Slice of each row of case3d_decoder_calls: per box, middle to z_max, then z_mid - 1 down to z_min."""
    slices = []
    for _, _, z_min, _, _, z_max in boxes:
        z_mid = int((z_max - z_min) / 2 + z_min)
        slices += list(range(z_mid, min(z_max, depth - 1) + 1)) + list(range(z_mid - 1, max(z_min, 0) - 1, -1))
    return slices


def test_3d_case(model, pipeline):
    volume, boxes = pipeline["case3d_imgs"], pipeline["case3d_boxes"]
    rec = Recorder(TorchEngine(model))
    segs = Predictor(rec).predict_3d(volume, boxes)
    inputs = [preprocess_image(volume[z], 256)[0] for z in range(len(volume))]
    slice_of = {}
    for images, embeddings in rec.encoded:
        for image, embedding in zip(images, embeddings):
            z = next(z for z, x in enumerate(inputs) if np.array_equal(x[0], image))
            slice_of[_digest(embedding)] = z
    assert sorted(slice_of.values()) == list(range(len(volume)))  # each slice encoded exactly once
    calls = pipeline["case3d_decoder_calls"]
    expected = Counter((z, *b) for z, b in zip(_reference_slices(boxes, len(volume)), calls[:, :4].tolist()))
    ours = Counter((slice_of[tag], *b) for tag, bs in rec.decoded for b in bs.tolist())
    assert ours == expected
    np.testing.assert_array_equal(calls[:, 4:], np.tile([192, 256, 120, 160], (len(calls), 1)))
    np.testing.assert_array_equal(segs, pipeline["case3d_segs"])


def test_overlap_rules_on_real_logits(model, pipeline):
    """order: the later box wins where masks overlap; argmax: the box with the higher logit wins."""
    image, boxes = pipeline["case2d_imgs"], pipeline["case2d_boxes"]
    engine = TorchEngine(model)
    x, resized = preprocess_image(image, 256)
    low, _ = engine.decode(engine.encode(x), scale_boxes(boxes, image.shape[:2], 256))
    logits = postprocess_logits(low, resized, image.shape[:2], 256)
    masks = masks_from_logits(logits)
    assert (masks[0] & masks[1]).any() and (masks[0] & ~masks[1]).any()
    order = Predictor(model).predict_2d(image, boxes)
    argmax = Predictor(model, overlap="argmax").predict_2d(image, boxes)
    np.testing.assert_array_equal(order, np.where(masks[1], 2, np.where(masks[0], 1, 0)))
    best = np.argmax(np.where(masks, logits, -np.inf), axis=0) + 1
    np.testing.assert_array_equal(argmax, np.where(masks.any(axis=0), best, 0))


def test_bf16_encoder_runs_and_returns_float32(model, pipeline):
    x = pipeline["case2d_encoder_input"]
    f32 = TorchEngine(model).encode(x)
    bf16 = TorchEngine(model, precision="bf16").encode(x)
    assert bf16.dtype == np.float32 and bf16.shape == f32.shape
    assert 0 < np.abs(bf16 - f32).max() / np.abs(f32).max() < 0.1


def test_cli_end_to_end_reproduces_the_reference_files(pipeline, tmp_path):
    """`python -m medsamlite predict` in a fresh process, with the golden weights as a checkpoint file."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    np.savez(inp / "2DBox_synth.npz", imgs=pipeline["case2d_imgs"], boxes=pipeline["case2d_boxes"])
    np.savez(inp / "3DBox_synth.npz", imgs=pipeline["case3d_imgs"], boxes=pipeline["case3d_boxes"],
             spacing=pipeline["case3d_spacing"])
    torch.save(golden_state_dict("litemedsam"), tmp_path / "weights.pth")
    cmd = [sys.executable, "-m", "medsamlite", "predict", "-i", str(inp), "-o", str(out), "--model", "litemedsam",
           "--checkpoint", str(tmp_path / "weights.pth"), "--threads", "2"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for case in ("2d", "3d"):
        with np.load(out / f"{case.upper()}Box_synth.npz") as z:
            np.testing.assert_array_equal(z["segs"], pipeline[f"case{case}_segs"])
            assert z["segs"].dtype == np.uint8
    assert (out / "timings.csv").read_text().count("\n") == 3


def test_golden_postprocess_litemedsam():
    arrays = golden_arrays("litemedsam")
    post = postprocess_logits(arrays["low_res_logits1"], (192, 256), (300, 400), 256)
    assert max_rel_error(post[:, None], arrays["post_logits1_300x400"]) <= 1e-4


def test_golden_label_map_litemedsam():
    """The reference 2D multi-box merge (box order, later boxes win) on the stored 3-box logits."""
    arrays = golden_arrays("litemedsam")
    masks = masks_from_logits(arrays["low_res_logits3"][:, 0])
    segs = np.zeros(masks.shape[1:], np.float32)
    for idx, mask in enumerate(masks, 1):
        segs[mask] = idx
    np.testing.assert_array_equal(segs, arrays["seg_label3"])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def _near_reference(segs: np.ndarray, expected: np.ndarray, labels: int) -> None:
    """Label maps equal, or differing in at most 1e-4 of the pixels with per-label Dice >= 0.9999."""
    assert (segs != expected).mean() <= 1e-4, f"{(segs != expected).sum()} pixels differ"
    for label in range(1, labels + 1):
        assert _dice(segs == label, expected == label) >= 0.9999, label


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_factorised_decoder_on_a_runtime_reproduces_the_reference(model, pipeline, backend, cache_dir):
    """Both cases through the compiled factorised decoder; 3D with a budget of 2 prepared slices (evictions)."""
    from medsamlite.export import compile

    with compile(model, backend, cache_dir=cache_dir, decoder="factorised") as engine:
        for kind in ("2d", "3d"):
            predictor = Predictor(engine, cache_mb=60)
            predict = predictor.predict_2d if kind == "2d" else predictor.predict_3d
            segs = predict(pipeline[f"case{kind}_imgs"], pipeline[f"case{kind}_boxes"])
            _near_reference(segs, pipeline[f"case{kind}_segs"], len(pipeline[f"case{kind}_boxes"]))


def test_cli_factorised_on_an_exported_folder(model, pipeline, cache_dir, tmp_path):
    """`predict --decoder factorised --cache-mb 60` on an exported OpenVINO folder, in a fresh process."""
    from medsamlite.export import export

    folder = export(model, tmp_path / "exported", backend="openvino", cache_dir=cache_dir)
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    np.savez(inp / "2DBox_synth.npz", imgs=pipeline["case2d_imgs"], boxes=pipeline["case2d_boxes"])
    np.savez(inp / "3DBox_synth.npz", imgs=pipeline["case3d_imgs"], boxes=pipeline["case3d_boxes"],
             spacing=pipeline["case3d_spacing"])
    cmd = [sys.executable, "-m", "medsamlite", "predict", "-i", str(inp), "-o", str(out), "--model", str(folder),
           "--decoder", "factorised", "--cache-mb", "60", "--threads", "2"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    for case in ("2d", "3d"):
        with np.load(out / f"{case.upper()}Box_synth.npz") as z:
            _near_reference(z["segs"], pipeline[f"case{case}_segs"], len(pipeline[f"case{case}_boxes"]))
