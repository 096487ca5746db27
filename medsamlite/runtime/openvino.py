"""OpenVINO runtime: a compiled folder's IR graphs on the CPU plugin (torch-free; `export.convert` writes them).

The CPU plugin's precision is set explicitly (`INFERENCE_PRECISION_HINT`) because its default is
bf16 on CPUs with AMX and f32 elsewhere. Its model cache (`CACHE_DIR`) lives in the compiled folder,
one sub-folder per precision: OpenVINO 2026.4 names the cached blob the same for every precision hint,
and loading a blob compiled at f32 with the bf16 hint crashes the process.

Every model opens on one `ov.Core` per process (`shared_core`), because each Core's CPU plugin swaps the
calling thread's alternate signal stack for its own and puts back the one it found when it is freed: Cores
freed in the order they were made leave the thread on an unmapped stack, and the next signal handled there
(SIGINT in `predict`, SIGCHLD under torch's DataLoader) kills the process with SIGSEGV.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from .compiled import CompiledSam
from .precision import fallback_warning

DEVICE = "CPU"
_TYPE_NAMES = {"f32": "f32", "bf16": "bf16", "f16": "f16"}
_COMPUTE_LAYERS = ("Convolution", "FullyConnected", "MatMul", "Deconvolution")



@functools.cache
def shared_core() -> ov.Core:
    """The process's one `ov.Core` (see the module docstring for why there is only one)."""
    return ov.Core()


def default_precision() -> str:
    """What the CPU plugin runs when no precision is set ("auto"): bf16 where the CPU has it natively, else f32."""
    return shared_core().get_property(DEVICE, "INFERENCE_PRECISION_HINT").get_type_name()


def _hint(core: ov.Core, precision: str) -> str | None:
    """The INFERENCE_PRECISION_HINT for a requested precision; None leaves the plugin's default."""
    if precision == "auto":
        return None
    if precision == "bf16":
        capabilities = core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")
        if "BF16" in capabilities:
            return "bf16"
        fallback_warning("bf16", "f32", f"OpenVINO CPU capabilities {', '.join(capabilities)}")
    return "f32"  # int8 graphs keep their non-quantised ops exact


def _runs_int8(compiled: ov.CompiledModel) -> bool:
    """Whether any convolution or matrix product of the compiled graph executes in int8."""
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "runtimePrecision" in info and info["layerType"].astype(str) in _COMPUTE_LAYERS:
            if info["runtimePrecision"].astype(str) in ("i8", "u8"):
                return True
    return False


class OpenVINOSam(CompiledSam):
    """Encoder and decoders (dense, prepare + factorised; the prompts graph) compiled by OpenVINO's CPU plugin,
    each decoder graph on its first use."""

    backend = "openvino"

    def __init__(self, path: Path, meta: dict[str, Any], threads: int | None = None, decoder: str | None = "dense") -> None:
        super().__init__(path, meta, decoder)
        core = shared_core()
        hint = _hint(core, self.requested_precision)
        config: dict[str, Any] = {}
        if hint is not None:
            config["INFERENCE_PRECISION_HINT"] = hint
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if os.access(path, os.W_OK):
            config["CACHE_DIR"] = str(path / "ov_cache" / (hint or "auto"))
        self._core, self._config = core, config
        self._encoder = self._compile("encoder")
        self._encode_queue: ov.AsyncInferQueue | None = None
        # one infer request per graph: the encoder's now, each decoder graph's on its first use
        self._graphs["encoder"] = self._encoder.create_infer_request()
        runs = self._encoder.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.precision = "int8" if _runs_int8(self._encoder) else _TYPE_NAMES.get(runs, runs)
        self.loaded_from_cache = bool(self._encoder.get_property("LOADED_FROM_CACHE"))
        self.threads = int(self._encoder.get_property("INFERENCE_NUM_THREADS"))

    def _compile(self, graph: str) -> ov.CompiledModel:
        return self._core.compile_model(str(self.path / self.meta["files"][graph]), DEVICE, self._config)

    def _open_graph(self, name: str) -> ov.InferRequest:
        return self._compile(name).create_infer_request()

    def _encode_one(self, image: np.ndarray) -> np.ndarray:
        # share_outputs=False: the request reuses its output buffer, so results are copied out
        return self._graph("encoder").infer({0: image}, share_inputs=True, share_outputs=False)[0]

    def _encode_many(self, images: np.ndarray) -> np.ndarray:
        """Images in parallel streams of one thread each, in full rounds of the streams; the rest (and all of
        them where the CPU gives one stream) one after another on the latency-compiled graph.

        Measured on 2 cores (litemedsam, f32, ms per slice): 4 slices 642 in streams vs 736 one after another,
        but 3 slices 835 vs 749, since the third runs alone on one stream's thread (bf16: 330 vs 330, 424 vs
        372). The decoder gained nothing this way (34 boxes: 0.63 s queued, 0.65 s one after another).
        """
        queue = self._throughput_encoder()
        rounds = images.shape[0] - images.shape[0] % len(queue)
        if len(queue) < 2 or rounds == 0:
            return super()._encode_many(images)
        outputs: list[np.ndarray] = [np.empty(0)] * rounds

        def keep(request: ov.InferRequest, index: int) -> None:
            outputs[index] = request.get_output_tensor(0).data.copy()

        queue.set_callback(keep)
        for i in range(rounds):
            queue.start_async({0: images[i:i + 1]}, i, share_inputs=True)
        queue.wait_all()
        rest = [super()._encode_many(images[rounds:])] if rounds < images.shape[0] else []
        return np.concatenate(outputs + rest)

    def _decode_one(self, embedding: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self._graph("decoder").infer({0: embedding, 1: box}, share_inputs=True, share_outputs=False)
        return out[0], out[1]

    def _prepare(self, embedding: np.ndarray) -> dict[str, np.ndarray]:
        out = self._graph("prepare").infer({0: embedding}, share_inputs=True, share_outputs=False)
        return {name: out[i] for i, name in enumerate(self.prepared_names)}

    def _decode_batch(self, prepared: list[np.ndarray], boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inputs = dict(enumerate([*prepared, boxes]))
        out = self._graph("factorised").infer(inputs, share_inputs=True, share_outputs=False)
        return out[0], out[1]

    def _decode_prompt(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        # the point count is the graph's one dynamic dimension: the request takes each call's shape
        out = self._graph("prompts").infer(dict(enumerate(inputs)), share_inputs=True, share_outputs=False)
        return out[0], out[1]

    def _release(self) -> None:
        """Drop the requests and compiled models (the shared Core stays: see the module docstring)."""
        self._graphs, self._encode_queue, self._encoder = {}, None, None

    def _throughput_encoder(self) -> ov.AsyncInferQueue:
        """The encoder compiled for throughput: on first use, from the model cache after that."""
        if self._encode_queue is None:
            config = {**self._config, "PERFORMANCE_HINT": "THROUGHPUT"}
            compiled = self._core.compile_model(str(self.path / self.meta["files"]["encoder"]), DEVICE, config)
            jobs = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            self._encode_queue = ov.AsyncInferQueue(compiled, jobs)
        return self._encode_queue


def open_compiled(path: Path, meta: dict[str, Any], threads: int | None, decoder: str | None = "dense") -> OpenVINOSam:
    return OpenVINOSam(path, meta, threads, decoder)
