"""The `Engine` protocol: what the predictor needs from a model, with numpy in and out (torch-free)."""
from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..config import ModelConfig


@runtime_checkable
class Engine(Protocol):
    """A model split in two halves, as the compiled runtimes and `TorchEngine` expose it.

    `encode`: preprocessed images (B, 3, S, S) float32 -> embeddings (B, 256, 64, 64).
    `decode`: one embedding (1, 256, 64, 64) and boxes (N, 4) float32 in the S frame -> low-res logits
    (N, 1, 256, 256) and predicted IoU (N, 1). Outputs may be views of buffers the engine reuses: callers
    copy what they keep. An engine with `decoder == "factorised"` also has `prepare(embedding)` (the
    per-image tensors, a mapping of arrays) and `decode_prepared(prepared, boxes)`, which the `Predictor` uses.
    An interactive engine's `decode` also takes `points` (N, P, 2) as x, y in the S frame with `labels` (N, P)
    (1 positive, 0 negative, -1 padding) and `masks` (N, 1, L, L), the previous low-res logits, as keywords,
    with `boxes` None or (N, 4): SAM's prompts (see `takes_clicks`).
    """

    config: ModelConfig

    def encode(self, images: np.ndarray) -> np.ndarray: ...

    def decode(self, embedding: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class Closable:
    """`close()` (idempotent) and `with engine:`; `_check_open()` makes using a closed engine a one-line error."""

    closed: bool = False

    def close(self) -> None:
        """Release what the runtime holds (compiled models, requests, sessions); a second call does nothing."""
        if not self.closed:
            self._release()
            self.closed = True

    def _release(self) -> None:
        """Drop the runtime's objects; engines that hold any override this."""

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"{self!r} is closed; open the model again to use it")

    def __enter__(self):  # noqa: ANN204 - the engine itself, of whatever subclass
        self._check_open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def describe(engine: Any) -> dict[str, Any]:
    """What an engine runs on, for run records: backend (or its class name), precision, threads (None: unknown)."""
    return {"backend": getattr(engine, "backend", type(engine).__name__),
            "precision": getattr(engine, "precision", None), "threads": getattr(engine, "threads", None)}


def check_embedding(config: ModelConfig, embedding: np.ndarray) -> None:
    """`decode` takes one embedding (1, C, h, w) of the model's shape; anything else is a ValueError."""
    if tuple(np.shape(embedding)) != (1, *config.embedding_shape):
        raise ValueError(f"{config.name}: embedding of shape {tuple(np.shape(embedding))}, expected "
                         f"(1, {', '.join(map(str, config.embedding_shape))}): decode takes one image's embedding")


def takes_clicks(engine: Any) -> bool:
    """Whether `engine.decode` takes points and mask prompts: a torch model's engine does, a compiled one where its
    folder holds the prompts graph (its `clicks_refused` says why not), a box-only engine does not."""
    if getattr(engine, "clicks_refused", None):
        return False
    try:
        return "points" in inspect.signature(engine.decode).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def takes_classes(engine: Any) -> bool:
    """Whether `engine` gives per-class logits (`decode_classes`): a torch model trained with class outputs."""
    return callable(getattr(engine, "decode_classes", None)) and getattr(engine.config, "num_classes", 0) > 0


def no_boxes(config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """What `decode` returns for zero boxes: empty logits (0, 1, L, L) and IoU (0, 1)."""
    side = config.low_res_size
    return np.zeros((0, 1, side, side), np.float32), np.zeros((0, 1), np.float32)


def as_engine(obj: Any, precision: str = "f32", decoder: str = "dense") -> Engine:
    """`obj` itself when it is an engine; a model that offers one (`obj.as_engine`, e.g. a torch SamLite) wrapped.

    The runtime never imports the torch side: a torch model brings its own engine.
    """
    to_engine = getattr(obj, "as_engine", None)
    if callable(to_engine):
        return to_engine(precision=precision, decoder=decoder)
    if isinstance(obj, Engine) and isinstance(getattr(obj, "config", None), ModelConfig):
        opened = getattr(obj, "decoder", "dense")
        if decoder != "dense" and opened != decoder:
            raise ValueError(f"{obj!r} runs decoder {opened!r}, not {decoder!r}: open it with decoder={decoder!r}")
        return obj
    raise TypeError(f"{type(obj).__name__} is not a model: expected a torch SamLite or an engine with "
                    "`config: ModelConfig`, `encode(images)` and `decode(embedding, boxes)` on numpy arrays")
