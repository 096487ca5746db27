"""`Predictor`: the task's pipeline on any engine — 2D multi-box, 3D propagation with a slice-embedding cache.

torch-free: a compiled runtime model runs it in a process that never imports torch; a torch `SamLite`
is wrapped in a `TorchEngine` on the way in.
"""
from __future__ import annotations

import time
import warnings
from collections import defaultdict, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .preprocess import (box_from_mask, masks_from_logits, pad_bottom_right, postprocess_logits,
                          preprocess_image, resize_longest_side, resized_shape, scale_boxes)
from .engine import as_engine
from .npz import CaseError, check_case, label_dtype, read_case, write_segs
from .overlay import write_overlay
from .slice_cache import SliceCache

OVERLAPS = ("order", "argmax")
# full-resolution logits of one postprocessing batch stay under this (a 1920x2560 box is 20 MB); the sigmoid
# and resize temporaries are as large again: 256 MiB gave a 2.3 GB peak on 200 boxes at 1024x1024
_POST_BYTES = 64 << 20
# cv2.resize cannot take every dtype; these pass through unchanged (uint8 must, for parity)
_CV_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


@dataclass
class CaseResult:
    """What `predict_file` did with one case: sizes, total and per-phase seconds, warnings."""

    name: str
    kind: str
    shape: tuple[int, ...]
    boxes: int
    seconds: float
    phases: dict[str, float]
    out_path: Path
    warnings: list[str] = field(default_factory=list)
    group: str = ""  # the router group that served the case ("" for a plain model)


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    """`values`, or a CaseError: a NaN/inf would threshold to an empty mask without a word."""
    if not np.isfinite(values).all():
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise CaseError(f"the model's {what} has {bad} NaN/inf values of {values.size}; expected finite numbers "
                        "(a corrupted model file or an input the model cannot handle)")
    return values


class PhaseTimer:
    """Seconds spent per phase since the last `reset`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def reset(self) -> None:
        self.seconds = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start


@dataclass
class _Track:
    """One 3D box's propagation: its slices centre-out, the masks of its previous step, its fallback prompt."""

    label: int
    z_lo: int
    z_mid: int
    z_hi: int
    fallback: np.ndarray  # the given box in the S frame
    masks: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_box(cls, label: int, box: np.ndarray, fallback: np.ndarray) -> "_Track":
        z_lo, z_hi = int(box[2]), int(box[5])
        return cls(label, z_lo, int((z_hi - z_lo) / 2 + z_lo), z_hi, fallback)

    @property
    def steps(self) -> int:
        return max(self.z_hi - self.z_mid, self.z_mid - self.z_lo) + 1

    def slices_at(self, step: int) -> list[tuple[int, int | None]]:
        """(slice, previous slice) pairs of this step: the middle slice, then one up and one down per step.

        The reference walks up to z_max and then down; both walks start from the middle slice's mask and
        never read each other, so running them side by side gives the same masks in half the steps.
        """
        if step == 0:
            return [(self.z_mid, None)]
        pairs = []
        if self.z_mid + step <= self.z_hi:
            pairs.append((self.z_mid + step, self.z_mid + step - 1))
        if self.z_mid - step >= self.z_lo:
            pairs.append((self.z_mid - step, self.z_mid - step + 1))
        return pairs


class Predictor:
    """Segment task cases with any model: a torch `SamLite` or a compiled engine (see `Engine`).

    chunk_size: most boxes per decoder call. overlap: "order" (the reference: later boxes win) or
    "argmax" (each pixel goes to the box with the highest logit among those whose mask covers it).
    3D keeps each slice's decoder input from its first to its last use: the embedding (4 MiB at 256x64x64)
    or, with the factorised decoder, its prepared tensors (about 26 MiB for SAM's decoder), at most
    `cache_slices` slices and `cache_mb` MiB at once (256 MiB: 64 embeddings, or 9 prepared slices).
    encode_batch: most slices per encoder call in 3D; OpenVINO runs a call's slices in parallel streams.
    precision: "f32" or "bf16", used only when wrapping a torch model; decoder: "dense" or "factorised",
    chosen when wrapping a torch model and otherwise when the engine was opened (`load(..., decoder=)`).
    """

    def __init__(self, model: Any, chunk_size: int = 64, overlap: str = "order", cache_slices: int = 64,
                 encode_batch: int = 4, precision: str = "f32", decoder: str = "dense",
                 cache_mb: float = 256) -> None:
        if overlap not in OVERLAPS:
            raise ValueError(f"overlap {overlap!r}; expected one of {OVERLAPS}")
        for name, value in (("chunk_size", chunk_size), ("cache_slices", cache_slices), ("encode_batch", encode_batch),
                            ("cache_mb", cache_mb)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.engine = as_engine(model, precision=precision, decoder=decoder)
        self.config = self.engine.config
        self.factorised = getattr(self.engine, "decoder", "dense") == "factorised"
        self.chunk_size, self.overlap = int(chunk_size), overlap
        self.cache_slices, self.encode_batch = int(cache_slices), int(encode_batch)
        self.cache_mb = float(cache_mb)
        self.timer = PhaseTimer()

    @property
    def timings(self) -> dict[str, float]:
        """Per-phase seconds of the last `predict_*` call."""
        return dict(self.timer.seconds)

    # public entry points -------------------------------------------------------------------------

    def predict_2d(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Label map (H, W) of an image (H, W[, 3]) and boxes (N, 4) [x_min, y_min, x_max, y_max]."""
        self.timer.reset()
        return self._predict_2d(*self._checked(image, boxes, "2D"))

    def predict_3d(self, volume: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Label map (D, H, W) of a volume and boxes (N, 6) [x_min, y_min, z_min, x_max, y_max, z_max]."""
        self.timer.reset()
        return self._predict_3d(*self._checked(volume, boxes, "3D"))

    def predict_file(self, in_path: str | Path, out_path: str | Path, overlay: str | Path | None = None) -> CaseResult:
        """Segment one task `.npz` case and write `segs` to `out_path` atomically (and an overlay PNG to `overlay`)."""
        start = time.perf_counter()
        self.timer.reset()
        in_path, out_path = Path(in_path), Path(out_path)
        if out_path.exists() and in_path.exists() and out_path.samefile(in_path):
            raise CaseError(f"{in_path}: output path is the input file; expected a different output folder")
        if out_path.is_dir():
            raise CaseError(f"{out_path}: output path is a folder; expected the path of the .npz file to write")
        with self.timer("read"):
            case = read_case(in_path)
        predict = self._predict_2d if case.kind == "2D" else self._predict_3d
        segs = predict(case.imgs, case.boxes)
        with self.timer("write"):
            write_segs(out_path, segs)
            if overlay is not None:
                write_overlay(overlay, case.kind, case.imgs, case.boxes, segs)
        return CaseResult(case.name, case.kind, tuple(case.imgs.shape), len(case.boxes),
                          time.perf_counter() - start, self.timings, out_path, case.warnings)

    # shared steps --------------------------------------------------------------------------------

    @staticmethod
    def _checked(image: np.ndarray, boxes: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
        image, boxes, messages = check_case(image, boxes, kind, f"predict_{kind.lower()}")
        for message in messages:
            warnings.warn(message, stacklevel=3)
        return image, boxes

    def _preprocess(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        if image.dtype not in _CV_DTYPES:
            image = image.astype(np.float64)
        return preprocess_image(image, self.config.input_size, self.config.normalization)

    def _encode(self, images: np.ndarray) -> np.ndarray:
        with self.timer("encode"):
            # a copy: runtimes may hand out views of output buffers they reuse on the next call
            embeddings = np.array(self.engine.encode(images), dtype=np.float32, copy=True)
        return _finite(embeddings, "image embedding")

    def _decoder_input(self, embedding: np.ndarray) -> Any:
        """What the decoder reads for one image: its embedding, or the factorised decoder's prepared tensors."""
        if not self.factorised:
            return embedding
        with self.timer("decode"):
            return self.engine.prepare(embedding)

    def _decode(self, source: Any, prompts: np.ndarray, resized: tuple[int, int],
                original: tuple[int, int]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Decode prompts (M, 4) on `_decoder_input`'s output in chunks; yield (first index, logits, masks)
        per postprocessing batch."""
        post = max(1, _POST_BYTES // (4 * original[0] * original[1]))
        decode = self.engine.decode_prepared if self.factorised else self.engine.decode
        for start in range(0, len(prompts), self.chunk_size):
            with self.timer("decode"):
                low, _ = decode(source, prompts[start:start + self.chunk_size])
            _finite(low, "mask logits")
            for first in range(0, len(low), post):
                with self.timer("postprocess"):
                    logits = postprocess_logits(low[first:first + post], resized, original, self.config.input_size)
                    masks = masks_from_logits(logits)
                yield start + first, logits, masks

    def _merge(self, segs: np.ndarray, best: np.ndarray | None, masks: np.ndarray, logits: np.ndarray,
               labels: np.ndarray) -> None:
        """Write masks into a label map; independent of the order in which boxes arrive."""
        with self.timer("postprocess"):
            for mask, logit, label in zip(masks, logits, labels):
                if best is None:  # "order": the highest label covering a pixel, i.e. later boxes win
                    segs[mask & (segs < label)] = label
                else:
                    win = mask & ((logit > best) | ((logit == best) & (segs < label)))
                    segs[win] = label
                    best[win] = logit[win]

    def _best(self, shape: tuple[int, ...]) -> np.ndarray | None:
        return np.full(shape, -np.inf, np.float32) if self.overlap == "argmax" else None

    # 2D ------------------------------------------------------------------------------------------

    def _predict_2d(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        original = tuple(image.shape[:2])
        segs = np.zeros(original, label_dtype(len(boxes)))
        if len(boxes) == 0:
            return segs
        with self.timer("preprocess"):
            x, resized = self._preprocess(image)
            prompts = scale_boxes(boxes, original, self.config.box_frame)
        source = self._decoder_input(self._encode(x))
        best = self._best(original)
        labels = np.arange(1, len(boxes) + 1)
        for first, logits, masks in self._decode(source, prompts, resized, original):
            self._merge(segs, best, masks, logits, labels[first:first + len(masks)])
        return segs

    # 3D ------------------------------------------------------------------------------------------

    def _predict_3d(self, volume: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """The reference propagation per box, run step by step across boxes with each slice encoded once."""
        original = tuple(volume.shape[1:])
        segs = np.zeros(volume.shape, label_dtype(len(boxes)))
        if len(boxes) == 0:
            return segs
        size = self.config.box_frame
        fallbacks = scale_boxes(boxes[:, [0, 1, 3, 4]], original, size)
        tracks = [_Track.from_box(label, box, fallback)
                  for label, (box, fallback) in enumerate(zip(boxes, fallbacks), start=1)]
        schedule = [self._step_groups(tracks, step) for step in range(max(t.steps for t in tracks))]
        uses: dict[int, deque[int]] = defaultdict(deque)
        for step, groups in enumerate(schedule):
            for z in groups:
                uses[z].append(step)
        cache = SliceCache(self.cache_slices, uses, budget=int(self.cache_mb * 2**20))
        best = self._best(volume.shape)
        resized = resized_shape(original, self.config.input_size)
        for groups in schedule:
            produced: dict[int, dict[int, np.ndarray]] = defaultdict(dict)  # track index -> slice -> mask
            order = sorted(groups)
            for i, z in enumerate(order):
                if z not in cache:
                    self._encode_slices(volume, [s for s in order[i:] if s not in cache], cache)
                source = cache.get(z)
                with self.timer("preprocess"):
                    prompts = np.stack([self._prompt(tracks[t], prev) for t, prev in groups[z]])
                labels = np.array([tracks[t].label for t, _ in groups[z]])
                for first, logits, masks in self._decode(source, prompts, resized, original):
                    for k, mask in enumerate(masks, start=first):
                        produced[groups[z][k][0]][z] = mask
                    self._merge(segs[z], None if best is None else best[z], masks, logits,
                                labels[first:first + len(masks)])
                cache.consume(z)
            for t, masks in produced.items():
                tracks[t].masks = masks
        return segs

    @staticmethod
    def _step_groups(tracks: list[_Track], step: int) -> dict[int, list[tuple[int, int | None]]]:
        """Slice -> [(track index, previous slice)] of one propagation step: one decoder call per slice."""
        groups: dict[int, list[tuple[int, int | None]]] = defaultdict(list)
        for t, track in enumerate(tracks):
            if step < track.steps:
                for z, prev in track.slices_at(step):
                    groups[z].append((t, prev))
        return dict(groups)

    def _encode_slices(self, volume: np.ndarray, slices: list[int], cache: SliceCache) -> None:
        """Encode up to `encode_batch` of the given slices in one call and add their decoder inputs to the cache."""
        batch = slices[: min(self.encode_batch, cache.slots())]
        with self.timer("preprocess"):
            inputs = [self._preprocess(volume[z]) for z in batch]
        embeddings = self._encode(np.concatenate([x for x, _ in inputs]))
        for z, embedding in zip(batch, embeddings):
            cache.put(z, self._decoder_input(embedding[None]))

    def _prompt(self, track: _Track, prev: int | None) -> np.ndarray:
        """The given box on the middle slice; else the previous mask's box widened by 3 px, or the given box."""
        if prev is None:
            return track.fallback
        size = self.config.box_frame
        # The reference keeps each box's slices as label-valued uint8 and resizes them with INTER_AREA,
        # so the label decides which partly covered pixels survive the resize: kept for exact parity.
        small = resize_longest_side(track.masks[prev].astype(np.uint8) * np.uint8(min(track.label, 255)), size)
        box = box_from_mask(pad_bottom_right(small, size))
        return track.fallback if box is None else box
