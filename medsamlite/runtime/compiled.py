"""`CompiledSam`, the runtime-side model, and `load`, which opens a compiled folder (torch-free).

A compiled folder (a cache entry or the output of `medsamlite export`) holds the image encoder, the
graphs of its decoders (dense: the prompt encoder + mask decoder; factorised: its `prepare` and
`factorised` graphs; an export holds both, a cache entry the one it was compiled for), plus
`config.json`, which says what it is: the `ModelConfig`, backend, precision, cache key, the decoders
it has (`decoders`), the prepared tensors' names and shapes in graph order (`prepared`), the factorised graph's static box count
(`factorised_boxes`), the versions that built it and the digest of every file, checked by `load` before a
runtime reads them. A runtime compiles only the graphs of the decoder it is opened with.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import ModelConfig
from ..constants import CONFIG_FILE, DECODERS, FORMAT_COMPILED
from ..extras import require
from .engine import Closable, check_embedding, no_boxes
from .files import check_recorded
from .precision import check_precision

# the graphs each decoder runs (beside the encoder)
DECODER_GRAPHS = {"dense": ("decoder",), "factorised": ("prepare", "factorised")}
# the runtime module of each backend (imported only when a folder of that backend is opened)
RUNTIMES = {"openvino": "medsamlite.runtime.openvino", "onnxruntime": "medsamlite.runtime.onnxruntime"}


def decoder_graphs(decoders: Sequence[str]) -> list[str]:
    """The graphs `decoders` run beside the encoder, in order."""
    return [graph for decoder in decoders for graph in DECODER_GRAPHS[decoder]]


def read_meta(path: str | Path) -> dict[str, Any]:
    """The `config.json` of a compiled folder or cache entry, with an error naming the file."""
    file = Path(path) / CONFIG_FILE
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"{file}: not a compiled medsamlite model ({error})") from error


class CompiledSam(Closable):
    """A `SamLite` on a CPU runtime, with the predictor's engine protocol (`encode`, `decode`; with
    `decoder="factorised"` also `prepare`, `decode_prepared`).

    `precision` is what the runtime actually runs at, read back from it; `requested_precision` is
    what was asked for. Outputs are fresh arrays the caller may keep. `close()` (or leaving
    `with load(folder) as engine:`) releases the runtime's compiled graphs.
    """

    backend: str = ""

    def __init__(self, path: Path, meta: dict[str, Any], decoder: str | None = "dense") -> None:
        self.path = path
        self.meta = meta
        self.decoder = decoder
        self.prepared_names = [name for name, _ in meta.get("prepared", [])]
        self.factorised_boxes = int(meta.get("factorised_boxes", 0))
        self.config = ModelConfig.from_dict(meta["config"])
        self.requested_precision = meta["precision"]
        self.precision = meta["precision"]
        self.loaded_from_cache = False

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.config.input_size, self.config.input_size)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Preprocessed images (B, 3, S, S) float32 to embeddings (B, 256, 64, 64), one graph call per image."""
        self._check_open()
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != self.input_shape[1:]:
            raise ValueError(f"{self.config.name}: images of shape {images.shape}, expected (B, 3, "
                             f"{self.config.input_size}, {self.config.input_size})")
        if images.shape[0] > 1:
            return self._encode_many(images)
        return self._encode_one(images)

    def _encode_many(self, images: np.ndarray) -> np.ndarray:
        """Several images on the static one-image graph; runtimes that can overlap calls override this."""
        return np.concatenate([self._encode_one(images[i:i + 1]) for i in range(images.shape[0])])

    def decode(self, embedding: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One embedding (1, 256, 64, 64) and boxes (N, 4) in the S frame to logits (N, 1, 256, 256), IoU (N, 1)."""
        self._check_open()
        embedding = np.ascontiguousarray(embedding, dtype=np.float32)
        boxes = np.ascontiguousarray(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
        check_embedding(self.config, embedding)
        if self.decoder is None:
            raise RuntimeError(f"{self.path}: opened with decoder=None (the encoder alone); decode needs "
                               "load(..., decoder='dense' or 'factorised')")
        if boxes.shape[0] == 0:
            return no_boxes(self.config)
        if self.decoder == "factorised":
            return self.decode_prepared(self._prepare(embedding), boxes)
        return self._decode(embedding, boxes)

    def prepare(self, embedding: np.ndarray) -> dict[str, np.ndarray]:
        """One embedding (1, 256, 64, 64) to the factorised decoder's per-image tensors (by name, fresh arrays)."""
        self._check_factorised()
        embedding = np.ascontiguousarray(embedding, dtype=np.float32)
        check_embedding(self.config, embedding)
        return self._prepare(embedding)

    def decode_prepared(self, prepared: dict[str, np.ndarray], boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 4) on one image's `prepare`d tensors to logits and IoU, `factorised_boxes` per graph call.

        The last call's batch is padded with copies of its last box, whose outputs are dropped.
        """
        self._check_factorised()
        boxes = np.ascontiguousarray(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
        if boxes.shape[0] == 0:
            return no_boxes(self.config)
        inputs = [prepared[name] for name in self.prepared_names]
        size, logits, iou = self.factorised_boxes, [], []
        for start in range(0, boxes.shape[0], size):
            chunk = boxes[start:start + size]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
            out = self._decode_batch(inputs, padded)
            logits.append(out[0][:len(chunk)])
            iou.append(out[1][:len(chunk)])
        return np.concatenate(logits), np.concatenate(iou)

    def _check_factorised(self) -> None:
        self._check_open()
        if self.decoder != "factorised":
            raise RuntimeError(f"{self.path}: opened with decoder {self.decoder!r}; prepare/decode_prepared need "
                               "load(..., decoder='factorised')")

    def graphs(self) -> list[str]:
        """The graphs this engine compiles: the encoder and those of its decoder."""
        return ["encoder", *decoder_graphs([self.decoder] if self.decoder else [])]

    def _encode_one(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _decode(self, embedding: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N >= 1, 4) on the static one-box graph (see export.compile.DECODER_BOXES): one call per box."""
        outputs = [self._decode_one(embedding, boxes[i:i + 1]) for i in range(boxes.shape[0])]
        return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])

    def _decode_one(self, embedding: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _prepare(self, embedding: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _decode_batch(self, prepared: list[np.ndarray], boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The prepared tensors (in `prepared_names` order) and `factorised_boxes` boxes through the graph."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.config.name!r}, backend={self.backend!r}, "
                f"precision={self.precision!r}, decoder={self.decoder!r}, path='{self.path}'{', closed' if self.closed else ''})")


def load(path: str | Path, backend: str | None = None, precision: str | None = None,
         threads: int | None = None, decoder: str | None = "dense") -> CompiledSam:
    """Open a compiled folder on its runtime; `precision`/`threads` override what it was exported with.

    decoder: "dense" (SAM's, one graph call per box), "factorised" (per-image `prepare` graph, then
    batches of boxes; the same logits to rounding) or None (the encoder alone: `encode` only).
    """
    path = Path(path)
    if decoder is not None and decoder not in DECODERS:
        raise ValueError(f"decoder {decoder!r}; expected one of {', '.join(DECODERS)} or None")
    meta = read_meta(path)
    if meta.get("format") != FORMAT_COMPILED:
        raise ValueError(f"{path / CONFIG_FILE}: format {meta.get('format')!r}, expected {FORMAT_COMPILED!r} "
                         "(a folder written by `medsamlite export` or `medsamlite.export.compile`)")
    # only the files this engine opens: the other decoder's graphs would add 26 MB of hashing to every cold start
    unused = set(decoder_graphs([d for d in DECODER_GRAPHS if d != decoder]))
    check_recorded(path, meta, skip=lambda name: Path(name).stem in unused)
    if decoder is not None and decoder not in meta.get("decoders", ["dense"]):
        raise ValueError(f"{path}: holds the decoders {meta.get('decoders', ['dense'])}, not {decoder!r}; export "
                         f"it again (an export holds every decoder), or open it with one of those")
    stored = meta["backend"]
    if backend is not None and backend != stored:
        raise ValueError(f"{path}: exported for backend {stored!r}, not {backend!r}; export it again with "
                         f"`medsamlite export --backend {backend}`")
    if precision is not None:
        check_precision(precision)
        if (precision == "int8") != (meta["precision"] == "int8"):
            raise ValueError(f"{path}: exported at precision {meta['precision']!r}; int8 is fixed at export "
                             f"time and cannot be switched to or from at load ({precision!r} requested)")
        meta = {**meta, "precision": precision}
    require(stored, f"{path} (exported for {stored})")
    runtime = importlib.import_module(RUNTIMES[stored])
    return runtime.open_compiled(path, meta, threads, decoder)
