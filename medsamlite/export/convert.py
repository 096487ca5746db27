"""Writing a compiled folder's graphs for each backend from the traced ONNX stage (int8: NNCF-quantised encoder)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

ENCODER_ONNX, DECODER_ONNX = "encoder.onnx", "decoder.onnx"


def version(backend: str) -> str:
    """The installed version of a backend's runtime."""
    if backend == "openvino":
        import openvino as ov

        return ov.get_version()
    import onnxruntime as ort

    return ort.__version__


def convert(backend: str, onnx_dir: Path, dest: Path, precision: str, calibration: list[np.ndarray] | None
            ) -> dict[str, str]:
    """Write the backend's encoder and decoder graphs into `dest`; returns {"encoder": file, "decoder": file}."""
    return (_openvino if backend == "openvino" else _onnxruntime)(onnx_dir, dest, precision, calibration)


def _openvino(onnx_dir: Path, dest: Path, precision: str, calibration: list[np.ndarray] | None) -> dict[str, str]:
    """IR with weights kept f32 (`compress_to_fp16=False`: fp16 weights cost 2e-4 of accuracy)."""
    import openvino as ov

    from ..runtime.openvino import DECODER, ENCODER

    encoder = ov.convert_model(str(onnx_dir / ENCODER_ONNX))
    if precision == "int8":
        from .quantize import quantize_encoder

        encoder = quantize_encoder(encoder, calibration, encoder.inputs[0].get_any_name())
    ov.save_model(encoder, str(dest / ENCODER), compress_to_fp16=False)
    ov.save_model(ov.convert_model(str(onnx_dir / DECODER_ONNX)), str(dest / DECODER), compress_to_fp16=False)
    return {"encoder": ENCODER, "decoder": DECODER}


def _onnxruntime(onnx_dir: Path, dest: Path, precision: str, calibration: list[np.ndarray] | None) -> dict[str, str]:
    """The ONNX graphs as they are; int8 writes an NNCF-quantised encoder instead."""
    if precision == "int8":
        import onnx

        from .quantize import quantize_encoder

        encoder = onnx.load(str(onnx_dir / ENCODER_ONNX))
        onnx.save(quantize_encoder(encoder, calibration, encoder.graph.input[0].name), str(dest / ENCODER_ONNX))
    else:
        shutil.copyfile(onnx_dir / ENCODER_ONNX, dest / ENCODER_ONNX)
    shutil.copyfile(onnx_dir / DECODER_ONNX, dest / DECODER_ONNX)
    return {"encoder": ENCODER_ONNX, "decoder": DECODER_ONNX}
