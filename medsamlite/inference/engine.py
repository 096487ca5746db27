"""The `Engine` protocol: what the predictor needs from a model, with numpy in and out (torch-free)."""
from __future__ import annotations

import sys
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..config import ModelConfig

PRECISIONS = ("f32", "bf16")


@runtime_checkable
class Engine(Protocol):
    """A model split in two halves, as `SamLite` and the compiled runtimes expose it.

    `encode`: preprocessed images (B, 3, S, S) float32 -> embeddings (B, 256, 64, 64).
    `decode`: embeddings (1 shared, or N paired, 256, 64, 64) and boxes (N, 4) float32 in the S frame
    -> low-res logits (N, 1, 256, 256) and predicted IoU (N, 1). Outputs may be views of buffers the
    engine reuses: callers copy what they keep.
    """

    config: ModelConfig

    def encode(self, images: np.ndarray) -> np.ndarray: ...

    def decode(self, embeddings: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def no_boxes(config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """What `decode` returns for zero boxes: empty logits (0, 1, L, L) and IoU (0, 1)."""
    side = config.low_res_size
    return np.zeros((0, 1, side, side), np.float32), np.zeros((0, 1), np.float32)


def _is_torch_module(obj: Any) -> bool:
    if "torch" not in sys.modules:  # nothing can be a torch module before torch was imported
        return False
    import torch

    return isinstance(obj, torch.nn.Module)


def as_engine(obj: Any, precision: str = "f32") -> Engine:
    """`obj` itself when it is an engine with numpy I/O; a torch `SamLite` wrapped in a `TorchEngine`."""
    if _is_torch_module(obj):
        from .torch_engine import TorchEngine

        return TorchEngine(obj, precision=precision)
    if isinstance(obj, Engine) and isinstance(obj.config, ModelConfig):
        return obj
    raise TypeError(f"{type(obj).__name__} is not a model: expected a torch SamLite or an engine with "
                    "`config: ModelConfig`, `encode(images)` and `decode(embeddings, boxes)` on numpy arrays")
