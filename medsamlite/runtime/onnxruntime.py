"""ONNX Runtime runtime: a compiled folder's ONNX graphs as CPU sessions (torch-free; `export.convert` writes them).

The CPU execution provider computes in f32 (it has no bf16 mode on x86), so "bf16" falls back with a
warning and "auto" runs f32.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .compiled import CompiledSam
from .precision import fallback_warning

ENCODER, DECODER = "encoder.onnx", "decoder.onnx"
PROVIDERS = ["CPUExecutionProvider"]



def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), options, providers=PROVIDERS)


class OnnxRuntimeSam(CompiledSam):
    """Encoder and decoder as ONNX Runtime CPU sessions."""

    backend = "onnxruntime"

    def __init__(self, path: Path, meta: dict[str, Any], threads: int | None = None) -> None:
        super().__init__(path, meta)
        if self.requested_precision == "bf16":
            fallback_warning("bf16", "f32", "ONNX Runtime's CPU provider computes in f32")
        self.precision = "int8" if self.requested_precision == "int8" else "f32"
        self.threads = threads
        files = meta["files"]
        self._encoder = _session(path / files["encoder"], threads)
        self._decoder = _session(path / files["decoder"], threads)
        self._encoder_input = self._encoder.get_inputs()[0].name
        self._decoder_inputs = [i.name for i in self._decoder.get_inputs()]

    def _encode_one(self, image: np.ndarray) -> np.ndarray:
        return self._encoder.run(None, {self._encoder_input: image})[0]

    def _decode_one(self, embedding: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, iou = self._decoder.run(None, dict(zip(self._decoder_inputs, (embedding, box))))
        return logits, iou


    def _release(self) -> None:
        self._encoder = self._decoder = None


def open_compiled(path: Path, meta: dict[str, Any], threads: int | None) -> OnnxRuntimeSam:
    return OnnxRuntimeSam(path, meta, threads)
