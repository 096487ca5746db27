"""Predictor control flow on a fake engine: 2D batching, overlap rules, the 3D slice cache and propagation order.

The fake engine's mask is its prompt box, so the 3D propagation really propagates (each slice's box is the
previous mask's box widened by 3 px); a transcription of the reference loops is the oracle.
"""
from __future__ import annotations

import math
from collections import Counter
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import pytest

from conftest import REPO
from fakes import BoxEngine
from medsamlite.runtime import CaseError, Predictor, as_engine
from medsamlite.runtime.slice_cache import SliceCache
from medsamlite.runtime.preprocess import (box_from_mask, masks_from_logits, pad_bottom_right, postprocess_logits,
                                   preprocess_image, resize_longest_side, resized_shape, scale_boxes)


def reference_2d(engine, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The reference 2D loop: one box per decoder call, later boxes overwrite."""
    size = engine.config.input_size
    x, resized = preprocess_image(image, size)
    embedding = engine.encode(x).copy()
    segs = np.zeros(image.shape[:2], np.uint8)
    for idx, box in enumerate(boxes, start=1):
        low, _ = engine.decode(embedding, scale_boxes(box[None], image.shape[:2], size))
        mask = masks_from_logits(postprocess_logits(low, resized, image.shape[:2], size))[0]
        segs[mask] = idx
    return segs


def reference_3d(engine, volume: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The reference 3D loops (CVPR24_LiteMedSAM_infer.py, MedSAM_infer_npz_3D): every box re-encodes its slices."""
    size = engine.config.input_size
    depth, shape = volume.shape[0], volume.shape[1:]
    segs = np.zeros(volume.shape, np.uint8)
    for idx, (x_min, y_min, z_min, x_max, y_max, z_max) in enumerate(boxes.astype(int), start=1):
        temp = np.zeros(volume.shape, np.uint8)
        mid_box = np.array([[x_min, y_min, x_max, y_max]])
        z_middle = int((z_max - z_min) / 2 + z_min)
        walks = [(range(z_middle, min(z_max + 1, depth)), -1), (range(z_middle - 1, max(-1, z_min - 1), -1), 1)]
        for slices, back in walks:
            for z in slices:
                x, resized = preprocess_image(volume[z], size)
                embedding = engine.encode(x).copy()
                box = scale_boxes(mid_box, shape, size)
                if z != z_middle:
                    pre = resize_longest_side(temp[z + back], size)
                    if pre.max() > 0:
                        box = box_from_mask(pad_bottom_right(pre, size))[None]
                low, _ = engine.decode(embedding, box)
                mask = masks_from_logits(postprocess_logits(low, resized, shape, size))[0]
                temp[z, mask] = idx
        segs[temp > 0] = idx
    return segs


def random_volume(rng: np.random.Generator, shape=(14, 40, 56)) -> np.ndarray:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def random_boxes_3d(rng: np.random.Generator, shape, n: int) -> np.ndarray:
    depth, h, w = shape
    x0, y0 = rng.integers(0, w // 2, n), rng.integers(0, h // 2, n)
    z0 = rng.integers(0, depth - 3, n)
    return np.stack([x0, y0, z0, x0 + rng.integers(4, w // 2, n), y0 + rng.integers(4, h // 2, n),
                     np.minimum(z0 + rng.integers(0, 9, n), depth - 1)], axis=1)


# 2D -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, chunk", [(1, 64), (10, 4), (12, 4), (34, 64), (5, 1)])
def test_2d_decodes_all_boxes_in_ceil_n_over_chunk_calls(n, chunk):
    rng = np.random.default_rng(n)
    image = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    boxes = np.stack([rng.integers(0, 40, n), rng.integers(0, 25, n), rng.integers(45, 90, n), rng.integers(30, 60, n)], 1)
    engine = BoxEngine()
    segs = Predictor(engine, chunk_size=chunk).predict_2d(image, boxes)
    assert engine.encode_calls == 1
    assert len(engine.decode_calls) == math.ceil(n / chunk)
    assert sum(len(b) for _, b in engine.decode_calls) == n
    np.testing.assert_array_equal(segs, reference_2d(BoxEngine(), image, boxes))
    assert segs.dtype == np.uint8 and set(np.unique(segs)) <= set(range(n + 1))


def test_2d_overlap_order_vs_argmax():
    image = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    small, big = [20, 20, 30, 30], [0, 0, 64, 64]
    boxes = np.array([small, big])
    order = Predictor(BoxEngine()).predict_2d(image, boxes)
    argmax = Predictor(BoxEngine(), overlap="argmax").predict_2d(image, boxes)
    assert (order == 2).all()  # the later, bigger box covers everything
    assert (argmax[22:28, 22:28] == 1).all()  # the small box has the higher logit there
    assert (argmax[40:, 40:] == 2).all() and (argmax > 0).all()


def test_2d_argmax_labels_only_where_the_winning_mask_is_on():
    image = np.zeros((32, 32, 3), np.uint8)
    segs = Predictor(BoxEngine(), overlap="argmax").predict_2d(image, np.array([[0, 0, 8, 8], [16, 16, 32, 32]]))
    assert (segs[:8, :8] == 1).all() and (segs[16:, 16:] == 2).all()
    assert (segs[9:15, 9:15] == 0).all()


def test_zero_boxes_give_an_all_zero_map_without_running_the_model():
    engine = BoxEngine()
    predictor = Predictor(engine)
    assert not predictor.predict_2d(np.zeros((10, 12, 3), np.uint8), np.zeros((0, 4))).any()
    segs = predictor.predict_3d(np.zeros((3, 10, 12), np.uint8), np.zeros((0, 6)))
    assert segs.shape == (3, 10, 12) and segs.dtype == np.uint8 and not segs.any()
    assert engine.encode_calls == 0 and not engine.decode_calls


def test_more_than_255_boxes_give_uint16_labels():
    image = np.zeros((64, 64), np.uint8)
    boxes = np.array([[i % 60, 0, i % 60 + 4, 64] for i in range(300)])
    segs = Predictor(BoxEngine(), chunk_size=128).predict_2d(image, boxes)
    assert segs.dtype == np.uint16 and segs.max() == 300


def test_non_cv_dtypes_are_accepted():
    image = np.random.default_rng(1).integers(-1000, 3000, (40, 50), dtype=np.int64)
    a = Predictor(BoxEngine()).predict_2d(image, np.array([[5, 5, 30, 30]]))
    b = Predictor(BoxEngine()).predict_2d(image.astype(np.float64), np.array([[5, 5, 30, 30]]))
    np.testing.assert_array_equal(a, b)


def test_partly_outside_boxes_are_clipped_with_a_warning():
    with pytest.warns(UserWarning, match="clipped"):
        segs = Predictor(BoxEngine()).predict_2d(np.zeros((40, 40), np.uint8), np.array([[-5, 10, 60, 20]]))
    assert (segs[10:20] == 1).all()


def test_bad_predictor_arguments():
    with pytest.raises(ValueError, match="overlap"):
        Predictor(BoxEngine(), overlap="max")
    with pytest.raises(ValueError, match="chunk_size"):
        Predictor(BoxEngine(), chunk_size=0)
    with pytest.raises(TypeError, match="encode"):
        as_engine(object())
    with pytest.raises(CaseError, match="inverted"):
        Predictor(BoxEngine()).predict_2d(np.zeros((8, 8)), np.array([[5, 5, 2, 7]]))


def test_as_engine_returns_engines_unchanged():
    engine = BoxEngine()
    assert as_engine(engine) is engine


# 3D -----------------------------------------------------------------------------------------------

def test_3d_matches_the_reference_loops_and_encodes_each_slice_once():
    rng = np.random.default_rng(3)
    volume = random_volume(rng)
    edge = [[30, 20, 2, 56, 40, 9]]  # reaches the bottom-right corner: the widened box clamps at S, not at h
    boxes = np.concatenate([random_boxes_3d(rng, volume.shape, 5), edge])
    engine, oracle = BoxEngine(), BoxEngine()
    segs = Predictor(engine).predict_3d(volume, boxes)
    np.testing.assert_array_equal(segs, reference_3d(oracle, volume, boxes))
    calls = sorted((tag, *box) for tag, b in engine.decode_calls for box in b.tolist())
    assert calls == sorted((tag, *b[0]) for tag, b in oracle.decode_calls)  # same prompts on the same slices
    slices = set().union(*(range(b[2], b[5] + 1) for b in boxes))
    assert engine.encoded == len(slices) and engine.encode_calls < len(slices)  # each once, in batches


def test_3d_overlapping_boxes_encode_each_distinct_slice_once():
    rng = np.random.default_rng(4)
    volume = random_volume(rng, (20, 48, 48))
    boxes = np.array([[4, 4, 0, 30, 30, 19], [10, 10, 3, 40, 40, 12], [0, 20, 8, 20, 47, 17], [5, 5, 9, 9, 9, 9]])
    engine = BoxEngine()
    segs = Predictor(engine).predict_3d(volume, boxes)
    assert engine.encoded == 20  # slices 0..19, each once, though the boxes visit 20+10+10+1
    assert sum(len(b) for _, b in engine.decode_calls) == 20 + 10 + 10 + 1
    np.testing.assert_array_equal(segs, reference_3d(BoxEngine(), volume, boxes))


def test_3d_boxes_on_the_same_slice_at_the_same_step_share_a_decoder_call():
    volume = random_volume(np.random.default_rng(5), (9, 32, 32))
    boxes = np.array([[2, 2, 0, 12, 12, 8], [15, 15, 0, 30, 30, 8], [4, 20, 0, 10, 30, 8]])
    engine = BoxEngine()
    Predictor(engine).predict_3d(volume, boxes)
    assert len(engine.decode_calls) == 9 and all(len(b) == 3 for _, b in engine.decode_calls)


def test_3d_small_cache_and_batched_encoder_give_the_same_segmentation():
    rng = np.random.default_rng(6)
    volume = random_volume(rng, (24, 40, 40))
    boxes = np.array([[2, 2, 0, 20, 20, 23], [10, 10, 14, 35, 35, 23], [5, 5, 0, 15, 15, 6]])
    expected = reference_3d(BoxEngine(), volume, boxes)
    for cache, batch in [(1, 1), (2, 1), (3, 4), (64, 4)]:
        engine = BoxEngine()
        segs = Predictor(engine, cache_slices=cache, encode_batch=batch).predict_3d(volume, boxes)
        np.testing.assert_array_equal(segs, expected, err_msg=f"cache {cache}, batch {batch}")
        assert engine.encoded >= 24
        if cache >= 8:
            assert engine.encoded == 24
        if batch > 1 and cache >= 8:
            assert engine.encode_calls < 24


def test_engine_output_buffers_are_copied_before_caching():
    rng = np.random.default_rng(7)
    volume = random_volume(rng, (10, 30, 30))
    volume[5:] //= 4  # slices differ in mean, so a stale buffer would show in the decode tags
    boxes = np.array([[2, 2, 0, 20, 20, 9], [5, 5, 2, 25, 25, 7]])
    fresh, reused = BoxEngine(), BoxEngine(reuse_buffers=True)
    expected = Predictor(fresh, encode_batch=2).predict_3d(volume, boxes)
    segs = Predictor(reused, encode_batch=2).predict_3d(volume, boxes)
    assert [t for t, _ in reused.decode_calls] == [t for t, _ in fresh.decode_calls]
    np.testing.assert_array_equal(segs, expected)


def test_3d_argmax_and_uint16():
    volume = np.zeros((4, 20, 20), np.uint8)
    boxes = np.array([[5, 5, 1, 10, 10, 2], [0, 0, 0, 20, 20, 3]])
    order = Predictor(BoxEngine()).predict_3d(volume, boxes)
    argmax = Predictor(BoxEngine(), overlap="argmax").predict_3d(volume, boxes)
    assert (order == 2).all()  # the later box covers the volume
    assert (argmax[1:3, 6:9, 6:9] == 1).all() and (argmax[[0, 3]] == 2).all()
    assert Counter(argmax.ravel().tolist())[1] < 2 * 8 * 8


def test_slice_cache_keeps_slices_until_their_last_use_and_evicts_the_farthest():
    from collections import deque

    cache = SliceCache(2, {0: deque([0, 5]), 1: deque([0, 1]), 2: deque([1])})
    cache.put(0, np.zeros(1))
    cache.put(1, np.ones(1))
    cache.consume(0)
    cache.consume(1)
    cache.put(2, np.full(1, 2.0))  # full: slice 0 (next use 5) goes, slice 1 (next use 1) stays
    assert 1 in cache and 2 in cache and 0 not in cache
    cache.consume(1)
    assert 1 not in cache and len(cache) == 1


# the runtime boundary ----------------------------------------------------------------------------

def test_inference_path_imports_neither_torch_nor_scipy(tmp_path):
    """A process that predicts a 2D and a 3D file on a numpy engine never loads torch, scipy or matplotlib."""
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        sys.path.insert(0, {str(REPO / 'tests')!r})
        from fakes import BoxEngine
        from medsamlite.runtime import Predictor
        import medsamlite.cli.predict
        np.savez({str(tmp_path / '2DBox_a.npz')!r}, imgs=np.zeros((30, 40, 3), np.uint8), boxes=np.array([[1, 1, 20, 20]]))
        np.savez({str(tmp_path / '3DBox_b.npz')!r}, imgs=np.zeros((5, 30, 40), np.uint8), boxes=np.array([[1, 1, 0, 20, 20, 4]]))
        p = Predictor(BoxEngine())
        for name in ("2DBox_a.npz", "3DBox_b.npz"):
            p.predict_file({str(tmp_path)!r} + "/" + name, {str(tmp_path / 'out')!r} + "/" + name)
        heavy = sorted(m for m in ("torch", "scipy", "matplotlib") if m in sys.modules)
        print("HEAVY", heavy)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    assert (tmp_path / "out" / "3DBox_b.npz").exists()


def test_cli_opens_an_exported_folder_through_runtime_load_without_torch(tmp_path):
    """`predict --model EXPORTED_DIR` reads the folder's format and goes through `runtime.compiled.load` (a fake)."""
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "config.json").write_text('{"format": "medsamlite-compiled"}')
    script = textwrap.dedent(f"""
        import argparse, sys
        import numpy as np
        sys.path.insert(0, {str(REPO / 'tests')!r})
        from fakes import BoxEngine
        import medsamlite.runtime.compiled
        from medsamlite.cli import predict as cli
        calls = []
        medsamlite.runtime.compiled.load = lambda path, **kw: calls.append((str(path), kw)) or BoxEngine()
        np.savez({str(tmp_path / '2DBox_a.npz')!r}, imgs=np.zeros((30, 40, 3), np.uint8), boxes=np.array([[1, 1, 20, 20]]))
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser)
        code = cli.run(parser.parse_args(["-i", {str(tmp_path / '2DBox_a.npz')!r}, "-o", {str(tmp_path / 'out')!r},
                                          "--model", {str(exported)!r}, "--threads", "1"]))
        print("CODE", code, "CALLS", calls, "TORCH", "torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"CODE 0 CALLS [('{exported}', {{'backend': None, 'precision': None, 'threads': 1, 'decoder': 'auto'}})] TORCH False" in out.stdout
    assert (tmp_path / "out" / "2DBox_a.npz").exists()
