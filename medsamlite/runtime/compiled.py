"""`CompiledSam`, the runtime-side model, and `load`, which opens a compiled folder (torch-free).

A compiled folder (a cache entry or the output of `medsamlite export`) holds the image encoder, the
graphs of its decoders (dense: the prompt encoder + mask decoder; factorised: its `prepare` and
`factorised` graphs; an export holds both, a cache entry the one it was compiled for), the prompts graph
where it was asked for (an export holds it: points and mask prompts, what `Predictor.refine` sends, one box
and P >= 1 points per call, P dynamic), plus `config.json`, which says what it is: the `ModelConfig`, backend,
precision, cache key, the decoders it has (`decoders`), whether it has the prompts graph (`prompts`), the
prepared tensors' names and shapes in graph order (`prepared`), the factorised graph's static box count
(`factorised_boxes`), the threshold from which "auto" picks the factorised decoder per CPU and precision
where export measured it (`factorised_from`, see `decoders`), the versions that built it and the digest of
every file. `load` checks the files of the graphs the engine may run against their digests (not those of a
decoder it does not hold; the prompts graph's when it is first opened); the runtime opens the encoder at once
and each decoder graph on its first use, so an "auto" engine that never decodes many boxes never compiles the
factorised graphs, and one that is never given a click never compiles the prompts graph.
"""
from __future__ import annotations

import importlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import ModelConfig
from ..constants import CONFIG_FILE, DECODERS, FORMAT_COMPILED
from ..extras import require
from .decoders import AUTO, check_mode, factorised_from, pick
from .engine import Closable, check_embedding, no_boxes
from .files import check_recorded
from .precision import check_precision

# the graphs each decoder runs (beside the encoder)
DECODER_GRAPHS = {"dense": ("decoder",), "factorised": ("prepare", "factorised")}
# the graph of points and mask prompts, and the config.json key that says a folder holds it
PROMPT_GRAPH = "prompts"
# the runtime module of each backend (imported only when a folder of that backend is opened)
RUNTIMES = {"openvino": "medsamlite.runtime.openvino", "onnxruntime": "medsamlite.runtime.onnxruntime"}


def decoder_graphs(decoders: Sequence[str]) -> list[str]:
    """The graphs `decoders` run beside the encoder, in order."""
    return [graph for decoder in decoders for graph in DECODER_GRAPHS[decoder]]


def prompt_graphs(meta: dict[str, Any]) -> list[str]:
    """The prompts graph, where a compiled folder (or traced stage) holds one (older exports do not)."""
    return [PROMPT_GRAPH] if meta.get(PROMPT_GRAPH) else []


def held_graphs(meta: dict[str, Any]) -> list[str]:
    """Every graph a compiled folder (or traced stage) holds by its config: the encoder, its decoders' graphs and
    the prompts graph where it has one."""
    return ["encoder", *decoder_graphs(meta.get("decoders", ["dense"])), *prompt_graphs(meta)]


def engine_decoders(decoder: str | None, meta: dict[str, Any]) -> list[str]:
    """The decoders an engine opened with `decoder` holds: "auto" those of the folder (an older export or a
    cache entry may hold one), "dense"/"factorised" that one, None none."""
    if decoder == AUTO:
        held = meta.get("decoders", ["dense"])
        return [d for d in DECODERS if d in held]
    return [decoder] if decoder else []


def read_meta(path: str | Path) -> dict[str, Any]:
    """The `config.json` of a compiled folder or cache entry, with an error naming the file."""
    file = Path(path) / CONFIG_FILE
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"{file}: not a compiled medsamlite model ({error})") from error


class CompiledSam(Closable):
    """A `SamLite` on a CPU runtime, with the predictor's engine protocol (`encode`, `decode`; with the
    factorised decoder also `prepare`, `decode_prepared`). `decode` takes points and mask prompts where the
    folder holds the prompts graph (`clicks_refused` is None; see `decode`).

    `decoder`: "dense", "factorised", "auto" (both, picked per call from the box count: `decoder_for`) or
    None (the encoder alone). `precision` is what the runtime actually runs at, read back from it;
    `requested_precision` is what was asked for. Outputs are fresh arrays the caller may keep. `close()`
    (or leaving `with load(folder) as engine:`) releases the runtime's compiled graphs.
    """

    backend: str = ""

    def __init__(self, path: Path, meta: dict[str, Any], decoder: str | None = "dense") -> None:
        self.path = path
        self.meta = meta
        self.decoder = decoder
        self.decoders = engine_decoders(decoder, meta)
        self.prepared_names = [name for name, _ in meta.get("prepared", [])]
        self.factorised_boxes = int(meta.get("factorised_boxes", 0))
        self.config = ModelConfig.from_dict(meta["config"])
        self.requested_precision = meta["precision"]
        self.precision = meta["precision"]
        self.loaded_from_cache = False
        self._graphs: dict[str, Any] = {}

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.config.input_size, self.config.input_size)

    @cached_property
    def factorised_from(self) -> int:
        """Boxes from which "auto" runs the factorised decoder: recorded for this CPU and precision, else 4."""
        return factorised_from(self.meta, self.precision)

    def decoder_for(self, boxes: int) -> str:
        """The decoder this engine runs on an image or slice of `boxes` boxes."""
        if len(self.decoders) == len(DECODERS):
            return pick(boxes, self.factorised_from)
        return self.decoders[0] if self.decoders else "dense"

    def opened(self) -> list[str]:
        """The graphs the runtime has opened so far, in the order they were opened."""
        return list(self._graphs)

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

    def decode(self, embedding: np.ndarray, boxes: np.ndarray | None, points: np.ndarray | None = None,
               labels: np.ndarray | None = None, masks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One embedding (1, 256, 64, 64) and boxes (N, 4) in the S frame to logits (N, 1, 256, 256), IoU (N, 1),
        on the decoder `decoder_for(N)` picks.

        With points (N, P, 2) as x, y in the S frame and labels (N, P) (1 positive, 0 negative, -1 padding), and
        optionally masks (N, 1, L, L), the previous low-res logits: the prompts graph, one call per box, as
        the torch model's `decode(..., points=, masks=)`. A box comes with each prompt here, and a mask prompt
        with at least one point; a folder without the graph refuses in one line (`clicks_refused`).
        """
        if points is not None or masks is not None:
            return self._decode_prompts(embedding, boxes, points, labels, masks)
        embedding, boxes = self._decoder_inputs(embedding, boxes)
        if boxes.shape[0] == 0:
            return no_boxes(self.config)
        if self.decoder_for(boxes.shape[0]) == "factorised":
            return self.decode_prepared(self._prepare(embedding), boxes)
        return self._decode(embedding, boxes)

    @property
    def clicks_refused(self) -> str | None:
        """Why `decode` takes no points or mask prompts (one line naming the folder), or None where it does."""
        if not self.meta.get(PROMPT_GRAPH):
            return (f"{self.path}: holds no prompts graph, which points and mask prompts (clicks) need; export it "
                    "again with this medsamlite (`medsamlite export` writes it; `compile(..., prompts=True)`)")
        if self.decoder is None:
            return (f"{self.path}: opened with decoder=None (the encoder alone); clicks need load(..., "
                    "decoder='auto', 'dense' or 'factorised')")
        return None

    def _decode_prompts(self, embedding: np.ndarray, boxes: np.ndarray | None, points: np.ndarray | None,
                        labels: np.ndarray | None, masks: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """`decode` with points and/or masks: checked, then the prompts graph once per box."""
        self._check_open()
        refused = self.clicks_refused
        if refused:
            raise RuntimeError(refused)
        if boxes is None:
            raise ValueError(f"{self.path}: a compiled engine decodes points and mask prompts with a box each; "
                             "expected boxes (N, 4)")
        embedding, boxes = self._decoder_inputs(embedding, boxes)
        n, side = boxes.shape[0], self.config.low_res_size
        if points is None:
            points, labels = np.zeros((n, 0, 2), np.float32), np.zeros((n, 0), np.float32)
        points = np.asarray(points, np.float32)
        if labels is None or points.ndim != 3 or points.shape[::2] != (n, 2) or np.shape(labels) != points.shape[:2]:
            raise ValueError(f"points of shape {points.shape} with labels of shape "
                             f"{None if labels is None else np.shape(labels)} for {n} boxes; expected ({n}, P, 2) "
                             f"and ({n}, P)")
        if masks is not None and np.shape(masks) != (n, 1, side, side):
            raise ValueError(f"mask prompt of shape {np.shape(masks)}; expected ({n}, 1, {side}, {side}): the "
                             "previous low-res logits")
        if points.shape[1] == 0:
            if masks is not None:
                raise ValueError(f"{self.path}: a mask prompt needs at least one point with it on a compiled "
                                 "engine; expected points (N, P, 2) with P >= 1 and labels (N, P)")
            return self.decode(embedding, boxes)
        if n == 0:
            return no_boxes(self.config)
        points = np.ascontiguousarray(points)
        labels = np.ascontiguousarray(labels, dtype=np.float32)
        no_mask = np.zeros((1, 1, side, side), np.float32)
        has_mask = np.array([0.0 if masks is None else 1.0], np.float32)
        outputs = []
        for i in range(n):
            mask = no_mask if masks is None else np.ascontiguousarray(masks[i:i + 1], dtype=np.float32)
            outputs.append(self._decode_prompt([embedding, boxes[i:i + 1], points[i:i + 1], labels[i:i + 1], mask,
                                                has_mask]))
        return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])

    def decode_dense(self, embedding: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`decode` on the dense decoder whatever the box count (an engine that holds it)."""
        embedding, boxes = self._decoder_inputs(embedding, boxes)
        if "dense" not in self.decoders:
            raise RuntimeError(f"{self.path}: opened with decoder {self.decoder!r}, which holds no dense decoder; "
                               "decode_dense needs load(..., decoder='dense' or 'auto')")
        return self._decode(embedding, boxes) if boxes.shape[0] else no_boxes(self.config)

    def _decoder_inputs(self, embedding: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One checked embedding and boxes (N, 4), contiguous float32."""
        self._check_open()
        embedding = np.ascontiguousarray(embedding, dtype=np.float32)
        boxes = np.ascontiguousarray(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
        check_embedding(self.config, embedding)
        if self.decoder is None:
            raise RuntimeError(f"{self.path}: opened with decoder=None (the encoder alone); decode needs "
                               "load(..., decoder='auto', 'dense' or 'factorised')")
        return embedding, boxes

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
        if "factorised" not in self.decoders:
            raise RuntimeError(f"{self.path}: opened with decoder {self.decoder!r}; prepare/decode_prepared need "
                               "load(..., decoder='factorised' or 'auto') on a folder that holds it")

    def graphs(self) -> list[str]:
        """The graphs this engine may open: the encoder, those of its decoders and the prompts graph where held."""
        prompts = prompt_graphs(self.meta) if self.decoder is not None else []
        return ["encoder", *decoder_graphs(self.decoders), *prompts]

    def _graph(self, name: str) -> Any:
        """The runtime's object for graph `name` (`_open_graph`), opened on first use."""
        if name not in self._graphs:
            self._check_open()
            if name not in self.graphs():
                raise RuntimeError(f"{self.path}: graph {name!r} is not among this engine's {self.graphs()}")
            if name == PROMPT_GRAPH:  # `load` left its files unchecked: most engines never open it
                check_recorded(self.path, self.meta, skip=lambda file: Path(file).stem != PROMPT_GRAPH)
            self._graphs[name] = self._open_graph(name)
        return self._graphs[name]

    def _open_graph(self, name: str) -> Any:
        """Compile (or load from the runtime's cache) one graph of the folder."""
        raise NotImplementedError

    def _release(self) -> None:
        self._graphs = {}

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

    def _decode_prompt(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """One box's prompts through the prompts graph: embedding, box (1, 4), points (1, P, 2), labels (1, P)
        float32, mask_input (1, 1, L, L), has_mask (1,)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.config.name!r}, backend={self.backend!r}, "
                f"precision={self.precision!r}, decoder={self.decoder!r}, path='{self.path}'{', closed' if self.closed else ''})")


def load(path: str | Path, backend: str | None = None, precision: str | None = None,
         threads: int | None = None, decoder: str | None = "dense") -> CompiledSam:
    """Open a compiled folder on its runtime; `precision`/`threads` override what it was exported with.

    decoder: "dense" (SAM's, one graph call per box), "factorised" (per-image `prepare` graph, then
    batches of boxes; the same logits to rounding), "auto" (both, each opened on first use, picked per image
    or slice from its box count; a folder holding one decoder runs it) or None (the encoder alone: `encode`).
    """
    path = Path(path)
    check_mode(decoder, allow_none=True)
    meta = read_meta(path)
    if meta.get("format") != FORMAT_COMPILED:
        raise ValueError(f"{path / CONFIG_FILE}: format {meta.get('format')!r}, expected {FORMAT_COMPILED!r} "
                         "(a folder written by `medsamlite export` or `medsamlite.export.compile`)")
    # only the files this engine may open: a decoder it does not hold would add 26 MB of hashing to a cold start
    # (the prompts graph's are checked when it is first opened)
    unused = set(decoder_graphs([d for d in DECODERS if d not in engine_decoders(decoder, meta)])) | {PROMPT_GRAPH}
    check_recorded(path, meta, skip=lambda name: Path(name).stem in unused)
    held = meta.get("decoders", ["dense"])
    if decoder == AUTO and not held or decoder not in (None, AUTO) and decoder not in held:
        raise ValueError(f"{path}: holds the decoders {held}, not {decoder!r}; export "
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
