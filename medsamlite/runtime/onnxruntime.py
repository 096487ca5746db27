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

PROVIDERS = ["CPUExecutionProvider"]



def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), options, providers=PROVIDERS)


class OnnxRuntimeSam(CompiledSam):
    """Encoder and decoders (dense, prepare + factorised; the prompts graph) as ONNX Runtime CPU sessions, each
    decoder graph's session made on its first use."""

    backend = "onnxruntime"

    def __init__(self, path: Path, meta: dict[str, Any], threads: int | None = None, decoder: str | None = "dense") -> None:
        super().__init__(path, meta, decoder)
        if self.requested_precision == "bf16":
            fallback_warning("bf16", "f32", "ONNX Runtime's CPU provider computes in f32")
        self.precision = "int8" if self.requested_precision == "int8" else "f32"
        self.threads = threads
        self._graph("encoder")

    def _open_graph(self, name: str) -> ort.InferenceSession:
        return _session(self.path / self.meta["files"][name], self.threads)

    def _run(self, graph: str, *inputs: np.ndarray) -> list[np.ndarray]:
        session = self._graph(graph)
        return session.run(None, {i.name: x for i, x in zip(session.get_inputs(), inputs)})

    def _encode_one(self, image: np.ndarray) -> np.ndarray:
        return self._run("encoder", image)[0]

    def _decode_one(self, embedding: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, iou = self._run("decoder", embedding, box)
        return logits, iou

    def _prepare(self, embedding: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.prepared_names, self._run("prepare", embedding)))

    def _decode_batch(self, prepared: list[np.ndarray], boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, iou = self._run("factorised", *prepared, boxes)
        return logits, iou

    def _decode_prompt(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        logits, iou = self._run("prompts", *inputs)
        return logits, iou


def open_compiled(path: Path, meta: dict[str, Any], threads: int | None, decoder: str | None = "dense") -> OnnxRuntimeSam:
    return OnnxRuntimeSam(path, meta, threads, decoder)
