"""`TorchEngine`: a torch `SamLite` behind the runtime's numpy `Engine` protocol, on any device."""
from __future__ import annotations

from .extras import require

require("torch", "a torch engine")

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .constants import TORCH_PRECISIONS
from .runtime.decoders import AUTO, DEFAULT_FACTORISED_FROM, check_mode, pick
from .runtime.engine import Closable, check_embedding, no_boxes

# boxes per factorised decoder call: larger batches add little per box and hold ~12 MB of activations per box
FACTORISED_BATCH = 16


class TorchEngine(Closable):
    """Runs `model.encode` / `model.decode` under `torch.inference_mode`; numpy in, float32 numpy out.

    Inputs go to the device the model's parameters live on and results come back to host numpy, so a
    model being trained on a GPU can be validated with the same `Predictor`. `precision="bf16"` runs the
    image encoder under bfloat16 autocast (the decoder stays f32: it is cheap and its logits decide the masks).
    `decoder="factorised"` prepares each image's box-independent decoder tensors once (`prepare`, or once
    per `decode` call) and decodes its boxes in batches of `FACTORISED_BATCH` (`decode_prepared`); `decoder="auto"`
    runs the factorised decoder from `factorised_from` boxes on an image (`decoder_for`) and the dense one below.
    `close()` only marks it closed: the model is the caller's.
    """

    backend = "torch"

    def __init__(self, model: nn.Module, precision: str = "f32", decoder: str = "dense") -> None:
        if precision not in TORCH_PRECISIONS:
            raise ValueError(f"precision {precision!r}; expected one of {TORCH_PRECISIONS}")
        check_mode(decoder)
        if not callable(getattr(model, "encode", None)) or not callable(getattr(model, "decode", None)):
            raise TypeError(f"{type(model).__name__} has no encode/decode: expected a medsamlite SamLite")
        self.model = model  # the caller's: each call runs it in eval mode and leaves its modes as they were
        self.config = model.config
        self.precision = precision
        self.decoder = decoder
        # a torch model records no threshold: the default (runtime.decoders)
        self.factorised_from = DEFAULT_FACTORISED_FROM

    def decoder_for(self, boxes: int) -> str:
        """The decoder this engine runs on an image or slice of `boxes` boxes."""
        return pick(boxes, self.factorised_from) if self.decoder == AUTO else self.decoder

    @property
    def threads(self) -> int:
        """torch's intra-op threads (what `--threads` sets through `torch.set_num_threads`)."""
        return torch.get_num_threads()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __repr__(self) -> str:
        return (f"TorchEngine({self.config.name!r}, precision={self.precision!r}, decoder={self.decoder!r}, "
                f"device='{self.device}'{', closed' if self.closed else ''})")

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """One image per forward on CPU (4 slices: 3.96 s looped, 5.08 s and 1.1 GB more peak RSS batched)."""
        self._check_open()
        device = self.device
        x = self._tensor(images)
        chunks = x.split(1) if device.type == "cpu" else [x]
        with self._inference(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                    enabled=self.precision == "bf16"):
            return torch.cat([self.model.encode(c).float() for c in chunks]).cpu().numpy()

    def decode(self, embedding: np.ndarray, boxes: np.ndarray | None, points: np.ndarray | None = None,
               labels: np.ndarray | None = None, masks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One call per prompt, as on the compiled runtimes: 34 boxes took 2.1 s looped, 4.4-6.3 s batched (CPU).

        Prompts as in `Engine`: boxes (N, 4), points (N, P, 2) with labels (N, P), masks (N, 1, L, L); a mask
        prompt always runs the dense decoder.
        """
        self._check_open()
        check_embedding(self.config, embedding)
        count = np.size(boxes) // 4 if boxes is not None else len(points) if points is not None else 0
        if masks is None and self.decoder_for(count) == "factorised":
            return self.decode_prepared(self.prepare(embedding), boxes, points, labels)
        return self.decode_dense(embedding, boxes, points, labels, masks)

    def decode_dense(self, embedding: np.ndarray, boxes: np.ndarray | None, points: np.ndarray | None = None,
                     labels: np.ndarray | None = None, masks: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """`decode` on SAM's dense decoder whatever the prompt count."""
        self._check_open()
        check_embedding(self.config, embedding)
        emb = self._tensor(embedding)
        prompts = self._prompts(boxes, points, labels, masks)
        if prompts is None:
            return no_boxes(self.config)
        n = len(next(iter(prompts.values())))
        with self._inference():
            outputs = [self.model.decode(emb, **self._rows(prompts, i, i + 1)) for i in range(n)]
        return self._numpy(outputs)

    def decode_classes(self, embedding: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Per-class low-res logits (N, C, L, L) of boxes (N, 4) on one embedding (`SamLite.decode_classes`),
        one call per box as `decode` does."""
        self._check_open()
        check_embedding(self.config, embedding)
        emb, rows = self._tensor(embedding), self._tensor(boxes).reshape(-1, 4)
        if not len(rows):
            side = self.config.low_res_size
            return np.zeros((0, self.config.num_classes, side, side), np.float32)
        decoder = self.decoder_for(len(rows))  # "auto" picks as decode does for this many boxes
        with self._inference():
            logits = [self.model.decode_classes(emb, rows[i:i + 1], decoder=decoder)[0] for i in range(len(rows))]
        return torch.cat(logits).float().cpu().numpy()

    def prepare(self, embedding: np.ndarray) -> dict[str, torch.Tensor]:
        """The factorised decoder's per-image tensors of one embedding (kept as torch tensors on the device)."""
        self._check_open()
        check_embedding(self.config, embedding)
        with self._inference():
            return self.model.prepare(self._tensor(embedding))

    def decode_prepared(self, prepared: dict[str, torch.Tensor], boxes: np.ndarray | None,
                        points: np.ndarray | None = None, labels: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 4) and/or points on `prepare`d tensors, `FACTORISED_BATCH` prompts per call."""
        self._check_open()
        prompts = self._prompts(boxes, points, labels, None)
        if prompts is None:
            return no_boxes(self.config)
        n = len(next(iter(prompts.values())))
        with self._inference():
            outputs = [self.model.decode_prepared(prepared, **self._rows(prompts, i, i + FACTORISED_BATCH))
                       for i in range(0, n, FACTORISED_BATCH)]
        return self._numpy(outputs)

    def _prompts(self, boxes, points, labels, masks) -> dict[str, torch.Tensor] | None:
        """The given prompts as tensors on the device; None for zero prompts."""
        prompts = {}
        if boxes is not None:
            prompts["boxes"] = self._tensor(boxes).reshape(-1, 4)
        if points is not None:
            if labels is None or np.shape(labels) != np.shape(points)[:-1]:
                raise ValueError(f"points of shape {np.shape(points)} need labels of shape {np.shape(points)[:-1]}, "
                                 f"got {None if labels is None else np.shape(labels)}")
            prompts["points"] = self._tensor(points).reshape(len(points), -1, 2)
            prompts["labels"] = torch.from_numpy(np.asarray(labels, np.int64)).to(self.device)
        if masks is not None:
            prompts["masks"] = self._tensor(masks)
        if not prompts:
            raise ValueError("no prompt: expected boxes, points or masks")
        counts = {k: len(v) for k, v in prompts.items()}
        if len(set(counts.values())) != 1:
            raise ValueError(f"prompt counts differ: {counts}; expected one row per prompt in each")
        return None if not next(iter(counts.values())) else prompts

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        """Inference mode with every module in eval mode, each module's own mode restored afterwards (a model
        being trained keeps its frozen BatchNorm in eval and the rest in train)."""
        modules = list(self.model.modules())
        modes = [m.training for m in modules]
        self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            for module, mode in zip(modules, modes):
                module.training = mode

    @staticmethod
    def _rows(prompts: dict[str, torch.Tensor], start: int, stop: int) -> dict:
        """`SamLite.decode`'s prompt arguments for prompts start:stop."""
        rows = {k: v[start:stop] for k, v in prompts.items()}
        points = (rows.pop("points"), rows.pop("labels")) if "points" in rows else None
        return {"boxes": rows.get("boxes"), "points": points, **({"masks": rows["masks"]} if "masks" in rows else {})}

    @staticmethod
    def _numpy(outputs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
        return (torch.cat([o[0] for o in outputs]).float().cpu().numpy(),
                torch.cat([o[1] for o in outputs]).float().cpu().numpy())
