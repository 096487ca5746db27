"""Images without labels for distillation: the outside test set stays out, variants are seeded and varied."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medsamlite.data.unlabelled import OUTSIDE, Image2D, random_boxes, variants, write_image_set


def _photo(seed: int = 0) -> Image2D:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    return Image2D("2DBox_Photo_test-noise", image, random_boxes(image.shape, 3, seed))


def test_variants_are_seeded_and_differ_from_each_other():
    a, b = variants(_photo(), 6, seed=0), variants(_photo(), 6, seed=0)
    assert [v.name for v in a] == [f"2DBox_Photo_test-noise-v{k}" for k in range(6)]
    assert all(np.array_equal(x.image, y.image) and np.array_equal(x.boxes, y.boxes) for x, y in zip(a, b))
    shapes = {v.image.shape for v in a}
    assert len(shapes) > 1, "crops should change the image's size"
    assert all(v.image.dtype == np.uint8 and min(v.image.shape[:2]) >= 8 for v in a)
    for v in a:
        h, w = v.image.shape[:2]
        assert (v.boxes[:, 2] <= w).all() and (v.boxes[:, 3] <= h).all() and (v.boxes[:, :2] >= 0).all()
    assert variants(_photo(), 0) == []


def test_the_outside_set_is_never_trained_on_and_variants_come_from_training_images_only(tmp_path: Path):
    parts = write_image_set(tmp_path, synthetic=12, held_out=0.2, seed=0, real=True, real_variants=2)
    train = {p.stem for p in parts["train"]}
    outside = {Path(f).stem for files in OUTSIDE.values() for f in files}
    assert not any(o in name for o in outside for name in train)
    held_real = {p.stem for p in parts["heldout/real"]}
    originals = {name for name in train if "-v" not in name.rsplit("_", 1)[-1]}
    for name in train - originals:
        assert name.rsplit("-v", 1)[0] in originals, f"{name}: a variant of an image that is not trained on"
    assert not any(name.startswith(tuple(held_real)) for name in train)
