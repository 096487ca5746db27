"""Writing a compiled folder's graphs for each backend from the traced ONNX stage (int8: NNCF-quantised encoder)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

ENCODER_ONNX = "encoder.onnx"


def version(backend: str) -> str:
    """The installed version of a backend's runtime."""
    from ..runtime.compile_cache import runtime_version

    return runtime_version(backend)


def convert(backend: str, onnx_dir: Path, dest: Path, decoder_graphs: list[str], precision: str,
            calibration: list[np.ndarray] | None) -> dict[str, str]:
    """Write the backend's encoder and `decoder_graphs` into `dest`; returns {graph: file}.

    The decoder graphs are written alike for every precision (int8 quantises only the encoder).
    """
    return (_openvino if backend == "openvino" else _onnxruntime)(onnx_dir, dest, decoder_graphs, precision,
                                                                   calibration)


def _openvino(onnx_dir: Path, dest: Path, decoder_graphs: list[str], precision: str,
              calibration: list[np.ndarray] | None) -> dict[str, str]:
    """IR with weights kept f32 (`compress_to_fp16=False`: fp16 weights cost 2e-4 of accuracy)."""
    import openvino as ov

    from ..runtime.openvino import shared_core

    # the Core's ONNX reader gives the same IR (bit-identical outputs) as `ov.convert_model`, in a sixth of the
    # time: convert_model also runs offline constant folding and preprocessing passes that the CPU plugin does
    # again when it compiles (swin_t encoder 4.7 -> 0.8 s)
    read = shared_core().read_model
    encoder = read(str(onnx_dir / ENCODER_ONNX))
    if precision == "int8":
        from .quantize import quantize_encoder

        encoder = quantize_encoder(encoder, calibration, encoder.inputs[0].get_any_name())
    files = {"encoder": "encoder.xml"}
    ov.save_model(encoder, str(dest / files["encoder"]), compress_to_fp16=False)
    for graph in decoder_graphs:
        files[graph] = f"{graph}.xml"
        ov.save_model(read(str(onnx_dir / f"{graph}.onnx")), str(dest / files[graph]),
                      compress_to_fp16=False)
    return files


def _onnxruntime(onnx_dir: Path, dest: Path, decoder_graphs: list[str], precision: str,
                 calibration: list[np.ndarray] | None) -> dict[str, str]:
    """The ONNX graphs as they are; int8 writes an NNCF-quantised encoder instead."""
    if precision == "int8":
        import onnx

        from .quantize import quantize_encoder

        encoder = onnx.load(str(onnx_dir / ENCODER_ONNX))
        onnx.save(quantize_encoder(encoder, calibration, encoder.graph.input[0].name), str(dest / ENCODER_ONNX))
    else:
        shutil.copyfile(onnx_dir / ENCODER_ONNX, dest / ENCODER_ONNX)
    files = {"encoder": ENCODER_ONNX}
    for graph in decoder_graphs:
        files[graph] = f"{graph}.onnx"
        shutil.copyfile(onnx_dir / files[graph], dest / files[graph])
    return files
