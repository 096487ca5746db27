"""`RoutedPredictor`: lazy groups, least-recently-used eviction (closing what it built), routing by dimension."""
from __future__ import annotations

import numpy as np
import pytest

from fakes import BoxEngine
from medsamlite.runtime import Predictor
from medsamlite.runtime.npz import peek_kind
from medsamlite.runtime.routed import Lazy, RoutedPredictor
from medsamlite.runtime.router import Router, parse_groups


class ClosingEngine(BoxEngine):
    """A fake engine that counts `close()` calls and refuses work once closed."""

    closed = 0

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale, self.is_closed = scale, False

    def encode(self, images: np.ndarray) -> np.ndarray:
        assert not self.is_closed, "a closed engine was used"
        return super().encode(images) * self.scale

    def close(self) -> None:
        self.is_closed = True
        ClosingEngine.closed += 1


def _write(folder, name: str, kind: str):
    rng = np.random.default_rng(len(name))
    if kind == "3D":
        np.savez(folder / name, imgs=rng.integers(0, 255, (4, 30, 30), dtype=np.uint8),
                 boxes=np.array([[4, 4, 0, 20, 20, 3]]))
    else:
        np.savez(folder / name, imgs=rng.integers(0, 255, (30, 30, 3), dtype=np.uint8), boxes=np.array([[4, 4, 20, 20]]))
    return folder / name


def test_at_most_max_loaded_groups_are_held_the_least_recent_evicted_and_closed(tmp_path) -> None:
    router = Router(parse_groups("CT;US;XRay"))
    built: list[str] = []

    def source(group: str, scale: float) -> Lazy:
        return Lazy(lambda: built.append(group) or ClosingEngine(scale))

    sources = {"CT": source("CT", 1.0), "US": source("US", 0.5), "XRay": source("XRay", 0.25),
               "general": ClosingEngine(2.0)}  # an engine given as it is stays the caller's: never closed
    cases = [_write(tmp_path, name, kind) for name, kind in
             [("3DBox_CT_1.npz", "3D"), ("2DBox_US_2.npz", "2D"), ("2DBox_XRay_3.npz", "2D"), ("2DBox_US_4.npz", "2D"),
              ("2DBox_Fundus_5.npz", "2D"), ("2DBox_XRay_6.npz", "2D")]]
    wide = RoutedPredictor(router, sources, max_loaded=3)
    expected = {p.name: np.load(wide.predict_file(p, tmp_path / "wide" / p.name).out_path)["segs"] for p in cases}
    wide.close()

    ClosingEngine.closed, built[:] = 0, []
    routed = RoutedPredictor(router, sources, max_loaded=1).with_options(chunk_size=2)
    assert routed.max_loaded == 1 and routed.loaded == []
    held = []
    for path in cases:
        result = routed.predict_file(path, tmp_path / "one" / path.name)
        held.append(routed.loaded)
        np.testing.assert_array_equal(np.load(result.out_path)["segs"], expected[path.name])
        assert result.group == router.route(path)
    assert held == [["CT"], ["US"], ["XRay"], ["US"], ["general"], ["XRay"]]
    assert built == ["CT", "US", "XRay", "US", "XRay"]  # each reload builds the group's engine again
    assert ClosingEngine.closed == 4 and not sources["general"].is_closed
    assert routed.served["US"] == {"backend": "ClosingEngine", "precision": None, "threads": None}

    two = RoutedPredictor(router, sources)  # default: two groups held, the least recently used one evicted
    for path in (cases[0], cases[1], cases[0], cases[2]):
        two.predict_file(path, tmp_path / "two" / path.name)
    assert two.max_loaded == 2 and two.loaded == ["CT", "XRay"]
    with pytest.raises(ValueError, match="max_loaded"):
        RoutedPredictor(router, sources, max_loaded=0)


def test_groups_select_by_dimension_as_well_as_modality(tmp_path) -> None:
    router = Router(parse_groups("CT3D=CT@3D,MR@3D;CT2D=CT@2D;MR"))
    assert router.route("3DBox_CT_1.npz") == "CT3D" and router.route("2DBox_CT_1.npz") == "CT2D"
    assert router.route("2DBox_MR_1.npz") == "MR" and router.route("3DBox_MR_1.npz") == "CT3D"
    assert router.route("2DBox_US_1.npz") == "general"
    # a name that does not say its dimension: read from the file's boxes and image header
    volume, image = _write(tmp_path, "CT_case_1.npz", "3D"), _write(tmp_path, "CT_case_2.npz", "2D")
    assert (peek_kind(volume), peek_kind(image)) == ("3D", "2D")
    assert router.route(volume) == "CT3D" and router.route(image) == "CT2D"
    assert Router.from_dict(router.to_dict()) == router
    with pytest.raises(ValueError, match="CT@4D"):
        parse_groups("X=CT@4D")
    with pytest.raises(ValueError, match="each belongs to one"):
        Router(parse_groups("A=CT@3D;B=CT@3D"))


def test_a_plain_predictor_result_names_no_group(tmp_path) -> None:
    path = _write(tmp_path, "2DBox_US_1.npz", "2D")
    assert Predictor(BoxEngine()).predict_file(path, tmp_path / "out.npz").group == ""
