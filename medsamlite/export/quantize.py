"""int8 post-training quantisation of the image encoder with NNCF (OpenVINO and ONNX models alike).

Only the encoder is quantised: it holds nearly all of the compute, and the decoder's inputs (an
embedding plus boxes) would need their own calibration set. Never chosen silently: `precision="int8"`
needs a calibration set from the caller, and `medsamlite bench precision` reports its accuracy change.

Weights are quantised to half the 8-bit range everywhere (NNCF's `OverflowFix.ENABLE`). CPUs without
VNNI (AVX2, and AVX-512 without VNNI like the task's Xeon W-2133) multiply u8 x s8 with `vpmaddubsw`,
whose 16-bit sums saturate: without the fix `repvit_m0_6_medsam`'s embedding was off by 1.12 (max abs error
over max abs value) there, 0.17 on a VNNI CPU; with it 0.22 on both (emulated with
`ONEDNN_MAX_CPU_ISA=AVX512_CORE` on a Sapphire Rapids, 2026-12-07). The fix is applied on every CPU
because an exported int8 folder is often built on one CPU and run on another.

Every int8 encoder is checked against the f32 model on its calibration images when it is built
(`check_int8`); one outside the bounds is refused, never cached or exported.
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
    """NNCF int8 quantisation of an `openvino.Model` or `onnx.ModelProto` encoder, safe on CPUs without VNNI."""
    require("int8", "precision='int8'")
    import nncf

    dataset = nncf.Dataset(batches, lambda x: {input_name: x})
    advanced = nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.ENABLE)
    return nncf.quantize(model, dataset, subset_size=len(batches), model_type=nncf.ModelType.TRANSFORMER,
                         advanced_parameters=advanced)


# bounds an int8 encoder must meet on its calibration images against the f32 model
INT8_MAX_ERROR = 0.5  # embedding: max |int8 - f32| / max |f32|
INT8_MIN_AGREEMENT = 0.9  # mean Dice of the masks decoded from each embedding for the same boxes


class Int8Refused(ValueError):
    """An int8 encoder that is not the network it was quantised from on this CPU (one line, naming the CPU)."""


def probe_boxes(side: int) -> np.ndarray:
    """Boxes in the `side` frame that the int8 check decodes: a 3 x 3 grid of thirds and the centre half."""
    third, boxes = side / 3, [[side / 4, side / 4, 3 * side / 4, 3 * side / 4]]
    boxes += [[i * third, j * third, (i + 1) * third - 1, (j + 1) * third - 1] for i in range(3) for j in range(3)]
    return np.asarray(boxes, np.float32)


def int8_fidelity(model: Any, encode: Any, batches: list[np.ndarray]) -> tuple[float, float]:
    """(embedding error, mask agreement) of `encode` (an int8 engine's) against torch `model` at f32."""
    import torch

    boxes = torch.from_numpy(probe_boxes(model.config.box_frame))
    errors, scores = [], []
    with torch.no_grad():
        for batch in batches:
            reference = model.encode(torch.from_numpy(batch)).float()
            quantised = torch.from_numpy(np.asarray(encode(batch), np.float32))
            errors.append(float((quantised - reference).abs().max() / reference.abs().max().clamp_min(1e-12)))
            a, b = (model.decode(e, boxes)[0] > 0 for e in (reference, quantised))
            both, total = (a & b).flatten(1).sum(1), a.flatten(1).sum(1) + b.flatten(1).sum(1)
            scores += torch.where(total > 0, 2 * both / total.clamp_min(1), 1.0).tolist()
    return max(errors), float(np.mean(scores))


def check_int8(model: Any, encode: Any, batches: list[np.ndarray], backend: str) -> dict[str, float]:
    """The int8 encoder's fidelity on its calibration images; `Int8Refused` outside the bounds."""
    from ..runtime.precision import cpu_summary

    error, agreement = int8_fidelity(model, encode, batches)
    if error > INT8_MAX_ERROR or agreement < INT8_MIN_AGREEMENT:
        raise Int8Refused(f"int8 {model.config.name} on {backend} is off from f32 on its calibration images on "
                          f"{cpu_summary()}: embedding error {error:.3g} (bound {INT8_MAX_ERROR}), mask agreement "
                          f"{agreement:.3f} (bound {INT8_MIN_AGREEMENT}); refused, use f32 or bf16")
    return {"int8_embedding_error": round(error, 4), "int8_mask_agreement": round(agreement, 4)}
