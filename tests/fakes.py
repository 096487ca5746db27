"""Fake engines for the runtime's tests: the predictor's control flow without a network (numpy only)."""
from __future__ import annotations

import numpy as np

from medsamlite.config import ModelConfig


class BoxEngine:
    """A fake model: the mask of a box is the box itself, with logit 1 + 100 / area (small boxes are surer).

    The embedding is the image's mean, broadcast, so decode calls can be traced back to their slice.
    `reuse_buffers` mimics OpenVINO, which returns the same output buffer on every call.
    """

    def __init__(self, input_size: int = 256, reuse_buffers: bool = False) -> None:
        self.config = ModelConfig(name="box", encoder="none", input_size=input_size)
        self.reuse_buffers = reuse_buffers
        self.encode_calls, self.encoded, self.decode_calls = 0, 0, []
        self._buffer: np.ndarray | None = None

    def encode(self, images: np.ndarray) -> np.ndarray:
        assert images.shape[1:] == (3, self.config.input_size, self.config.input_size) and images.dtype == np.float32
        self.encode_calls += 1
        self.encoded += len(images)
        out = np.broadcast_to(images.mean(axis=(1, 2, 3), dtype=np.float64).astype(np.float32)[:, None, None, None],
                              (len(images), 256, 64, 64))
        if not self.reuse_buffers:
            return np.array(out)
        if self._buffer is None or self._buffer.shape != out.shape:
            self._buffer = np.empty(out.shape, np.float32)
        self._buffer[...] = out
        return self._buffer

    def decode(self, embeddings: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert embeddings.shape == (1, 256, 64, 64)
        assert boxes.ndim == 2 and boxes.shape[1] == 4
        self.decode_calls.append((float(embeddings.reshape(len(embeddings), -1)[0, 0]), boxes.copy()))
        scale = 256 / self.config.input_size
        low = np.full((len(boxes), 1, 256, 256), -1.0, np.float32)
        for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, np.float64) * scale):
            area = max((x1 - x0) * (y1 - y0), 1.0)
            low[i, 0, int(y0):int(y1), int(x0):int(x1)] = 1 + 100 / area
        return low, np.zeros((len(boxes), 1), np.float32)
