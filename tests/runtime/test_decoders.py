"""The decoder chooses itself: "auto" picks dense or factorised per image or slice from its box count, opens each
decoder's graphs on first use, honours a threshold recorded in config.json, and gives dense's label maps.

Numpy fakes of a compiled folder (`fakes.graph_engine`): no runtime, no timing; the compiled runtimes are
checked against these in tests/export/test_factorised_runtimes.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fakes import compiled_meta, graph_engine
from medsamlite.runtime import Predictor
from medsamlite.runtime.compiled import engine_decoders, read_meta
from medsamlite.runtime.decoders import (DEFAULT_FACTORISED_FROM, MEASURED_BOXES, THRESHOLDS_KEY, check_mode,
                                         decoder_for, factorised_from, measure_threshold, record_threshold,
                                         threshold_of)
from medsamlite.runtime.precision import cpu_name


def _image_and_boxes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    corner = rng.integers(0, 40, (n, 2))
    return image, np.concatenate([corner, corner + rng.integers(5, 30, (n, 2))], axis=1)


def test_auto_runs_dense_for_one_box_factorised_for_many_and_opens_the_factorised_graphs_lazily(tmp_path):
    engine = graph_engine(tmp_path, compiled_meta())
    predictor = Predictor(engine)
    image, boxes = _image_and_boxes(12)
    predictor.predict_2d(image, boxes[:1])
    assert engine.calls == {"encoder": 1, "decoder": 1} and engine.opened() == ["encoder", "decoder"]
    predictor.predict_2d(image, boxes[:DEFAULT_FACTORISED_FROM - 1])
    assert engine.opened() == ["encoder", "decoder"]  # still below the threshold: the factorised graphs unopened
    predictor.predict_2d(image, boxes)  # 12 boxes: one prepare, two padded batches of 8, no dense call
    assert engine.calls == {"encoder": 3, "decoder": DEFAULT_FACTORISED_FROM, "prepare": 1, "factorised": 2}
    assert engine.opened() == ["encoder", "decoder", "prepare", "factorised"]
    assert predictor.decoded == {"dense": 2, "factorised": 1}
    assert [engine.decoder_for(n) for n in (0, 1, 3, 4, 200)] == ["dense"] * 3 + ["factorised"] * 2


@pytest.mark.parametrize("n", [1, 3, 4, 12, 70])
def test_auto_label_maps_equal_dense(n: int, tmp_path):
    image, boxes = _image_and_boxes(n, seed=n)
    dense = Predictor(graph_engine(tmp_path, compiled_meta(), decoder="dense")).predict_2d(image, boxes)
    auto = Predictor(graph_engine(tmp_path, compiled_meta()), chunk_size=64).predict_2d(image, boxes)
    np.testing.assert_array_equal(auto, dense)
    assert dense.any()


def test_a_3d_slice_picks_from_the_boxes_decoded_on_it_over_the_propagation(tmp_path):
    """Five boxes over slices 2-4 and one box alone on slices 6-8: factorised on 2-4, dense elsewhere."""
    volume = np.random.default_rng(0).integers(0, 255, (9, 40, 44), dtype=np.uint8)
    boxes = np.array([[2 + i, 3, 2, 20 + i, 25, 4] for i in range(5)] + [[5, 5, 6, 30, 30, 8]])
    engine = graph_engine(tmp_path, compiled_meta())
    auto = Predictor(engine).predict_3d(volume, boxes)
    assert engine.calls["prepare"] == 3 and engine.calls["decoder"] == 3  # slices 2-4 prepared, 6-8 one box each
    dense = Predictor(graph_engine(tmp_path, compiled_meta(), decoder="dense")).predict_3d(volume, boxes)
    np.testing.assert_array_equal(auto, dense)


def test_a_recorded_threshold_is_honoured_for_its_cpu_and_precision(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(compiled_meta()))
    record_threshold(tmp_path, 2, "f32")
    record_threshold(tmp_path, 9, "bf16")
    record_threshold(tmp_path, 1, "f32", cpu="another CPU")
    meta = read_meta(tmp_path)
    assert meta[THRESHOLDS_KEY] == {cpu_name(): {"f32": 2, "bf16": 9}, "another CPU": {"f32": 1}}
    engine = graph_engine(tmp_path, meta)
    assert engine.factorised_from == 2 and engine.decoder_for(1) == "dense" and engine.decoder_for(2) == "factorised"
    image, boxes = _image_and_boxes(2)
    Predictor(engine).predict_2d(image, boxes)
    assert engine.calls["prepare"] == 1 and engine.calls["decoder"] == 0
    assert factorised_from(meta, "bf16") == 9 and factorised_from(meta, "int8") == DEFAULT_FACTORISED_FROM
    assert factorised_from(meta, "f32", cpu="a third CPU") == DEFAULT_FACTORISED_FROM


def test_forced_decoders_and_folders_holding_one_decoder(tmp_path):
    for decoder in ("dense", "factorised"):
        engine = graph_engine(tmp_path, compiled_meta(), decoder=decoder)
        assert {engine.decoder_for(n) for n in (1, 100)} == {decoder}
        assert engine.opened() == ["encoder"]
    # "auto" on an older export or a cache entry that holds one decoder runs that one
    assert engine_decoders("auto", compiled_meta(["dense"])) == ["dense"]
    assert engine_decoders("auto", {}) == ["dense"]  # written before config.json listed decoders
    only = graph_engine(tmp_path, compiled_meta(["factorised"]))
    assert only.decoder_for(1) == "factorised"
    with pytest.raises(RuntimeError, match="holds no dense decoder"):
        only.decode_dense(np.zeros((1, 256, 64, 64), np.float32), np.array([[1, 1, 9, 9]], np.float32))
    dense_only = graph_engine(tmp_path, compiled_meta(["dense"]))
    assert dense_only.decoder_for(100) == "dense"
    with pytest.raises(RuntimeError, match="decoder='factorised' or 'auto'"):
        dense_only.prepare(np.zeros((1, 256, 64, 64), np.float32))
    with pytest.raises(ValueError, match="expected one of auto, dense, factorised"):
        check_mode("sparse")

    class Plain:  # an engine that does not pick (a user's, a fake): the decoder it was opened with, else dense
        decoder = "factorised"

    assert decoder_for(Plain(), 1) == "factorised" and decoder_for(object(), 100) == "dense"


def test_threshold_of_timings():
    dense = {1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0}
    assert threshold_of(dense, {1: 3.0, 2: 3.0, 4: 3.5, 8: 4.0}) == 4
    assert threshold_of(dense, {1: 0.5, 2: 1.0, 4: 2.0, 8: 4.0}) == 1
    assert threshold_of(dense, {1: 3.0, 2: 1.0, 4: 5.0, 8: 7.0}) == 8  # a noisy win below a loss does not count
    assert threshold_of(dense, {1: 3.0, 2: 3.0, 4: 5.0, 8: 9.0}) == 9  # never paid: past the largest count


def test_measure_threshold_times_both_decoders_on_a_fake_clock(tmp_path):
    """Dense costs 10 per box (one call each); factorised 25 per image plus 32 per padded batch of 8: it is
    cheaper from 6 boxes on (57 against 60), never at 4 (57 against 40). No wall clock is read."""
    engine = graph_engine(tmp_path, compiled_meta())
    cost = {"encoder": 0, "decoder": 10, "prepare": 25, "factorised": 32}
    clock = lambda: sum(cost[g] * n for g, n in engine.calls.items())  # noqa: E731
    assert measure_threshold(engine, clock=clock) == 6
    assert sum(engine.calls.values()) > 0 and engine.calls["factorised"] >= 4 * len(MEASURED_BOXES)
    cost["prepare"] = 1000  # factorised never pays up to the largest count measured
    assert measure_threshold(engine, counts=(1, 8, 32), repeats=1, clock=clock) == 33
