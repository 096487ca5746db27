"""int8 post-training quantisation of the image encoder with NNCF (OpenVINO and ONNX models alike).

Only the encoder is quantised: it holds nearly all of the compute, and the decoder's inputs (an
embedding plus boxes) would need their own calibration set. Never chosen silently: `precision="int8"`
needs a calibration set from the caller, and `medsamlite bench precision` reports its accuracy change.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..extras import require


def calibration_batches(calibration: Sequence[np.ndarray], input_size: int) -> list[np.ndarray]:
    """Each preprocessed image as a (1, 3, S, S) float32 array; a clear error for anything else."""
    if calibration is None or len(calibration) == 0:
        raise ValueError("precision='int8' needs calibration=[preprocessed images (3, S, S) or (1, 3, S, S)]")
    batches = []
    for i, image in enumerate(calibration):
        array = np.asarray(image, dtype=np.float32)
        array = array[None] if array.ndim == 3 else array
        if array.shape != (1, 3, input_size, input_size):
            raise ValueError(f"calibration[{i}] has shape {np.shape(image)}, expected (3, {input_size}, "
                             f"{input_size}) or (1, 3, {input_size}, {input_size})")
        batches.append(np.ascontiguousarray(array))
    return batches


def calibration_digest(calibration: Sequence[np.ndarray] | None) -> str | None:
    """Part of the cache key: the calibration set changes an int8 model."""
    if calibration is None:
        return None
    import hashlib

    h = hashlib.sha256()
    for image in calibration:
        array = np.ascontiguousarray(np.asarray(image, dtype=np.float32))
        h.update(str(array.shape).encode() + array.tobytes())
    return h.hexdigest()


def quantize_encoder(model: Any, batches: list[np.ndarray], input_name: str) -> Any:
    """NNCF int8 quantisation of an `openvino.Model` or `onnx.ModelProto` encoder."""
    require("int8", "precision='int8'")
    import nncf


    dataset = nncf.Dataset(batches, lambda x: {input_name: x})
    return nncf.quantize(model, dataset, subset_size=len(batches), model_type=nncf.ModelType.TRANSFORMER)
