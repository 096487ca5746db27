"""`Predictor`: the task's pipeline on any engine — 2D multi-box, 3D propagation with a slice-embedding cache.

torch-free: a compiled runtime model runs it in a process that never imports torch; a torch `SamLite`
is wrapped in a `TorchEngine` on the way in.
"""
from __future__ import annotations

import time
import warnings
from collections import Counter, defaultdict, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from .preprocess import (box_from_mask, masks_from_logits, pad_bottom_right, postprocess_logits,
                          preprocess_image, resize_longest_side, resized_shape, scale_boxes)
from .decoders import decoder_for
from .engine import as_engine, takes_classes, takes_clicks
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


@dataclass(frozen=True)
class Click:
    """A click in the original image's pixels on object `label` (1-based): positive adds, negative removes;
    z: its slice (3D)."""

    label: int
    x: float
    y: float
    positive: bool = True
    z: int = 0


@dataclass
class Interaction:
    """A label map and what refining it needs without the encoder (see `Predictor.start`).

    embeddings: slice (0 in 2D) -> its embedding (1, C, h, w), 4 MiB each; per (label, slice): `prompts` the
    box (S frame) it was decoded with, `logits` its last low-res logits (1, L, L), `clicks` its clicks so far.
    """

    kind: str
    segs: np.ndarray
    boxes: np.ndarray
    embeddings: dict[int, np.ndarray]
    prompts: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    logits: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    clicks: dict[tuple[int, int], tuple[Click, ...]] = field(default_factory=dict)


class Predictor:
    """Segment task cases with any model: a torch `SamLite` or a compiled engine (see `Engine`).

    chunk_size: most boxes per decoder call. overlap: "order" (the reference: later boxes win) or
    "argmax" (each pixel goes to the box with the highest logit among those whose mask covers it).
    3D keeps each slice's decoder input from its first to its last use: the embedding (4 MiB at 256x64x64)
    or, with the factorised decoder, its prepared tensors (about 26 MiB for SAM's decoder), at most
    `cache_slices` slices and `cache_mb` MiB at once (256 MiB: 64 embeddings, or 9 prepared slices).
    encode_batch: most slices per encoder call in 3D; OpenVINO runs a call's slices in parallel streams.
    precision: "f32" or "bf16", used only when wrapping a torch model; decoder: "dense", "factorised" or "auto",
    chosen when wrapping a torch model and otherwise when the engine was opened (`load(..., decoder=)`). An
    "auto" engine's decoder is picked per image, or per 3D slice from the boxes decoded on it over the whole
    propagation (its prepared tensors serve every step); `decoded` counts, per decoder, the images and slices
    it ran on (a 3D slice encoded twice, when the slice cache was full, counts twice).
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
        self.decoded: Counter[str] = Counter()
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

    def predict_classes(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Class maps of a model with class outputs: (C, H, W) uint8 of an image and boxes (N, 4), (C, D, H, W) of a
        volume and boxes (N, 6); map c is 1 where some box's class-c mask covers the pixel. A 3D box is decoded
        from itself on every slice of its z range (no propagation: a class may be absent from the middle slice)."""
        self.timer.reset()
        return self._predict_classes(image, boxes)

    def predict_file(self, in_path: str | Path, out_path: str | Path, overlay: str | Path | None = None,
                     clicks: list[list[Click]] | None = None, classes: bool = False) -> CaseResult:
        """Segment one task `.npz` case and write `segs` to `out_path` atomically (and an overlay PNG to `overlay`);
        `clicks`: rounds of clicks, each refining the result of the one before (see `refine`); `classes`: also
        the class maps (`predict_classes`) under the key `npz.CLASSES_KEY`."""
        start = time.perf_counter()
        self.timer.reset()
        in_path, out_path = Path(in_path), Path(out_path)
        if out_path.exists() and in_path.exists() and out_path.samefile(in_path):
            raise CaseError(f"{in_path}: output path is the input file; expected a different output folder")
        if out_path.is_dir():
            raise CaseError(f"{out_path}: output path is a folder; expected the path of the .npz file to write")
        with self.timer("read"):
            case = read_case(in_path)
        if clicks:
            state = self._start(case.imgs, case.boxes)
            for round_ in clicks:
                state = self._refine(state, round_)
            segs = state.segs
        else:
            segs = (self._predict_2d if case.kind == "2D" else self._predict_3d)(case.imgs, case.boxes)
        maps = self._predict_classes(case.imgs, case.boxes) if classes else None
        with self.timer("write"):
            write_segs(out_path, segs, maps)
            if overlay is not None:
                write_overlay(overlay, case.kind, case.imgs, case.boxes, segs)
        return CaseResult(case.name, case.kind, tuple(case.imgs.shape), len(case.boxes),
                          time.perf_counter() - start, self.timings, out_path, case.warnings)

    def start(self, image: np.ndarray, boxes: np.ndarray) -> Interaction:
        """Segment an image (boxes (N, 4)) or a volume (boxes (N, 6)) as `predict_2d`/`predict_3d` do, keeping
        what `refine` needs: every slice's embedding in the boxes' ranges, each object's prompts and logits."""
        self.timer.reset()
        return self._start(image, boxes)

    def refine(self, previous: Interaction, clicks: list[Click]) -> Interaction:
        """`previous` with `clicks` added: each clicked object re-decoded on its clicked slice from its box, all its
        clicks there and its previous logits; in 3D propagated again from there away from the box's middle slice.
        Reuses the cached embeddings: no encoder call. `previous` is left as it was."""
        self.timer.reset()
        return self._refine(previous, clicks)

    def _start(self, image: np.ndarray, boxes: np.ndarray) -> Interaction:
        self._check_clicks_engine()
        kind = "3D" if np.ndim(boxes) == 2 and np.shape(boxes)[1] == 6 else "2D"
        image, boxes = self._checked(image, boxes, kind)
        state = Interaction(kind, np.zeros(image.shape[:3] if kind == "3D" else image.shape[:2],
                                           label_dtype(len(boxes))), boxes, {})
        if kind == "2D":
            state.embeddings[0] = self._encode(self._preprocess(image)[0])
            frame = scale_boxes(boxes, tuple(image.shape[:2]), self.config.box_frame)
            for label, box in enumerate(frame, start=1):
                state.prompts[label, 0] = box
            self._redecode(state, [(label, 0) for label in range(1, len(boxes) + 1)])
            self._resegment(state, [0])
            return state
        tracks = self._tracks(boxes, tuple(image.shape[1:]))
        needed = sorted({z for t in tracks for z in range(t.z_lo, t.z_hi + 1)})
        for first in range(0, len(needed), self.encode_batch):
            batch = needed[first:first + self.encode_batch]
            with self.timer("preprocess"):
                x = np.concatenate([self._preprocess(image[z])[0] for z in batch])
            for z, embedding in zip(batch, self._encode(x)):
                state.embeddings[z] = embedding[None]
        touched = set()
        for track in tracks:
            touched |= self._walk(state, track, track.z_mid, 1) | self._walk(state, track, track.z_mid - 1, -1)
        self._resegment(state, sorted(touched))
        return state

    def _refine(self, previous: Interaction, clicks: list[Click]) -> Interaction:
        self._check_clicks_engine()
        state = Interaction(previous.kind, previous.segs.copy(), previous.boxes, previous.embeddings,
                            dict(previous.prompts), dict(previous.logits), dict(previous.clicks))
        for click in clicks:
            key = self._click_key(state, click)
            state.clicks[key] = (*state.clicks.get(key, ()), click)
        touched = {(c.label, c.z if state.kind == "3D" else 0) for c in clicks}
        if state.kind == "2D":
            self._redecode(state, sorted(touched))
            self._resegment(state, [0])
            return state
        tracks = self._tracks(state.boxes, tuple(state.segs.shape[1:]))
        slices = set()
        for label in sorted({label for label, _ in touched}):
            track, zs = tracks[label - 1], [z for lab, z in touched if lab == label]
            up, down = [z for z in zs if z >= track.z_mid], [z for z in zs if z <= track.z_mid]
            if up:
                slices |= self._walk(state, track, min(up), 1)
            if down:  # the middle slice, if clicked, was decoded by the walk up
                slices |= self._walk(state, track, min(max(down), track.z_mid - 1), -1)
        self._resegment(state, sorted(slices))
        return state

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

    def _decoder_input(self, embedding: np.ndarray, boxes: int) -> Any:
        """What the decoder reads for one image or slice of `boxes` boxes: its embedding (dense), or the factorised
        decoder's prepared tensors (a mapping), as the engine picks."""
        decoder = decoder_for(self.engine, boxes)
        self.decoded[decoder] += 1
        if decoder == "dense":
            return embedding
        with self.timer("decode"):
            return self.engine.prepare(embedding)

    def _decode(self, source: Any, prompts: np.ndarray, resized: tuple[int, int],
                original: tuple[int, int]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Decode prompts (M, 4) on `_decoder_input`'s output in chunks; yield (first index, logits, masks)
        per postprocessing batch."""
        post = max(1, _POST_BYTES // (4 * original[0] * original[1]))
        # the decoder was picked for the whole image or slice (`_decoder_input`): an "auto" engine's own
        # `decode` would pick again for each chunk
        decode = (self.engine.decode_prepared if isinstance(source, Mapping)
                  else getattr(self.engine, "decode_dense", self.engine.decode))
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

    # class outputs -------------------------------------------------------------------------------

    def _predict_classes(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        if not takes_classes(self.engine):
            raise TypeError(f"{self.engine!r} has no class outputs; expected a torch model trained with class "
                            "outputs (`medsamlite train finetune --num-classes C`)")
        kind = "3D" if np.ndim(boxes) == 2 and np.shape(boxes)[1] == 6 else "2D"
        image, boxes = self._checked(image, boxes, kind)
        if kind == "2D":
            return self._class_plane(image, boxes)
        maps = np.zeros((self.config.num_classes, *image.shape[:3]), np.uint8)
        for z in range(image.shape[0]):
            rows = boxes[(boxes[:, 2] <= z) & (z <= boxes[:, 5])]
            if len(rows):
                maps[:, z] = self._class_plane(image[z], rows[:, [0, 1, 3, 4]])
        return maps

    def _class_plane(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(C, H, W) uint8: the union over `boxes` (N, 4) of each class's mask on one 2D image."""
        original = tuple(image.shape[:2])
        maps = np.zeros((self.config.num_classes, *original), np.uint8)
        if len(boxes) == 0:
            return maps
        with self.timer("preprocess"):
            x, resized = self._preprocess(image)
            prompts = scale_boxes(boxes, original, self.config.box_frame)
        embedding = self._encode(x)
        for start in range(0, len(prompts), self.chunk_size):
            with self.timer("decode"):
                low = _finite(self.engine.decode_classes(embedding, prompts[start:start + self.chunk_size]),
                              "class logits")
            with self.timer("postprocess"):
                for c in range(len(maps)):
                    logits = postprocess_logits(low[:, c], resized, original, self.config.input_size)
                    maps[c] |= masks_from_logits(logits).any(0)
        return maps

    # interactive ---------------------------------------------------------------------------------

    def _check_clicks_engine(self) -> None:
        refused = getattr(self.engine, "clicks_refused", None)
        if refused:  # a compiled folder without the prompts graph (an older export) or opened without decoders
            raise TypeError(refused)
        if not takes_clicks(self.engine):
            raise TypeError(f"{self.engine!r} decodes boxes only; clicks need a torch model or an exported folder "
                            "(their engines take points and mask prompts)")

    def _tracks(self, boxes: np.ndarray, original: tuple[int, int]) -> list[_Track]:
        fallbacks = scale_boxes(boxes[:, [0, 1, 3, 4]], original, self.config.box_frame)
        return [_Track.from_box(label, box, fallback)
                for label, (box, fallback) in enumerate(zip(boxes, fallbacks), start=1)]

    @staticmethod
    def _click_key(state: Interaction, click: Click) -> tuple[int, int]:
        """(label, slice) of a click, or a ValueError naming what is out of range."""
        n, shape = len(state.boxes), state.segs.shape
        if not 1 <= click.label <= n:
            raise ValueError(f"{click}: label {click.label}; expected 1..{n} (one per box)")
        if not (0 <= click.x < shape[-1] and 0 <= click.y < shape[-2]):
            raise ValueError(f"{click}: x, y outside the image of {shape[-1]} x {shape[-2]} pixels")
        if state.kind == "2D":
            return click.label, 0
        box = state.boxes[click.label - 1]
        if not box[2] <= click.z <= box[5]:
            raise ValueError(f"{click}: slice {click.z} outside label {click.label}'s box, slices "
                             f"{int(box[2])}..{int(box[5])}")
        return click.label, int(click.z)

    def _walk(self, state: Interaction, track: _Track, start: int, step: int) -> set[int]:
        """Decode `track` from slice `start` to its last slice in direction `step` (+1 up, -1 down): the middle
        slice from the given box, every other one from the box of the mask before it, as `_predict_3d` does;
        returns the slices decoded."""
        zs = range(start, (track.z_hi if step > 0 else track.z_lo) + step, step)
        for z in zs:
            key, prev = (track.label, z), z - step
            if z != track.z_mid and prev not in track.masks:
                track.masks = {prev: self._mask(state, (track.label, prev))}
            state.prompts[key] = track.fallback if z == track.z_mid else self._prompt(track, prev)
            self._redecode(state, [key])
            track.masks = {z: self._mask(state, key)}
        return set(zs)

    def _mask(self, state: Interaction, key: tuple[int, int]) -> np.ndarray:
        """The full-resolution mask of one (label, slice)'s stored logits."""
        original = tuple(state.segs.shape[-2:])
        with self.timer("postprocess"):
            logits = postprocess_logits(state.logits[key][None], resized_shape(original, self.config.input_size),
                                        original, self.config.input_size)
            return masks_from_logits(logits)[0]

    def _redecode(self, state: Interaction, keys: list[tuple[int, int]]) -> None:
        """Decode each (label, slice) from its box, its clicks and (when clicked) its previous logits; store them."""
        original = state.segs.shape[-2:]
        ratio = self.config.box_frame / max(original)  # points keep their fraction (SAM's apply_coords)
        for key in keys:
            clicks = state.clicks.get(key, ())
            prompt = {"boxes": state.prompts[key][None]}
            if clicks:
                prompt["points"] = np.array([[[c.x * ratio, c.y * ratio] for c in clicks]], np.float32)
                prompt["labels"] = np.array([[int(c.positive) for c in clicks]], np.int64)
                if key in state.logits:
                    prompt["masks"] = state.logits[key][None]
            with self.timer("decode"):
                low, _ = self.engine.decode(state.embeddings[key[1]], **prompt)
            state.logits[key] = np.array(_finite(low, "mask logits")[0], np.float32)

    def _resegment(self, state: Interaction, slices: list[int]) -> None:
        """Rebuild the label map on `slices` from every object's stored logits there."""
        original = state.segs.shape[-2:]
        resized = resized_shape(original, self.config.input_size)
        for z in slices:
            keys = [key for key in state.logits if key[1] == z]
            segs = state.segs[z] if state.kind == "3D" else state.segs
            segs[...] = 0
            if not keys:
                continue
            with self.timer("postprocess"):
                logits = postprocess_logits(np.stack([state.logits[k] for k in keys]), resized, original,
                                            self.config.input_size)
            self._merge(segs, self._best(original), masks_from_logits(logits), logits, np.array([k[0] for k in keys]))

    # 2D ------------------------------------------------------------------------------------------

    def _predict_2d(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        original = tuple(image.shape[:2])
        segs = np.zeros(original, label_dtype(len(boxes)))
        if len(boxes) == 0:
            return segs
        with self.timer("preprocess"):
            x, resized = self._preprocess(image)
            prompts = scale_boxes(boxes, original, self.config.box_frame)
        source = self._decoder_input(self._encode(x), len(boxes))
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
        boxes_on: Counter[int] = Counter()  # slice -> boxes decoded on it over the whole propagation
        for step, groups in enumerate(schedule):
            for z, group in groups.items():
                uses[z].append(step)
                boxes_on[z] += len(group)
        cache = SliceCache(self.cache_slices, uses, budget=int(self.cache_mb * 2**20))
        best = self._best(volume.shape)
        resized = resized_shape(original, self.config.input_size)
        for groups in schedule:
            produced: dict[int, dict[int, np.ndarray]] = defaultdict(dict)  # track index -> slice -> mask
            order = sorted(groups)
            for i, z in enumerate(order):
                if z not in cache:
                    self._encode_slices(volume, [s for s in order[i:] if s not in cache], cache, boxes_on)
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

    def _encode_slices(self, volume: np.ndarray, slices: list[int], cache: SliceCache,
                       boxes_on: Mapping[int, int]) -> None:
        """Encode up to `encode_batch` of the given slices in one call and add their decoder inputs to the cache."""
        batch = slices[: min(self.encode_batch, cache.slots())]
        with self.timer("preprocess"):
            inputs = [self._preprocess(volume[z]) for z in batch]
        embeddings = self._encode(np.concatenate([x for x, _ in inputs]))
        for z, embedding in zip(batch, embeddings):
            cache.put(z, self._decoder_input(embedding[None], boxes_on[z]))

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


def read_clicks(path: str | Path) -> dict[str, list[list[Click]]]:
    """A clicks JSON file: {case file name: [round, ...]}, a round a list of {"label": n, "point": [x, y] (2D) or
    [x, y, z] (3D), "positive": true | false} in the case's pixels; one-line errors name the file and the key."""
    from .folders import _read as read_json_object  # the one JSON-object reader, with its one-line errors

    path = Path(path)
    try:
        data = read_json_object(path)
    except ValueError as error:
        raise CaseError(str(error)) from None
    return {name: [[_click(path, f"{name}[{r}][{i}]", c) for i, c in enumerate(_list(path, f"{name}[{r}]", round_))]
                   for r, round_ in enumerate(_list(path, name, rounds))] for name, rounds in data.items()}


def _list(path: Path, key: str, value: Any) -> list:
    if not isinstance(value, list):
        raise CaseError(f"{path}: {key} is {type(value).__name__}; expected a list")
    return value


def _click(path: Path, key: str, value: Any) -> Click:
    point = value.get("point") if isinstance(value, dict) else None
    label, positive = (value.get("label"), value.get("positive", True)) if isinstance(value, dict) else (None, None)
    if (not isinstance(label, int) or isinstance(label, bool) or not isinstance(positive, bool)
            or not isinstance(point, list) or len(point) not in (2, 3)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)):
        raise CaseError(f"{path}: {key} is {_json_text(value)}; expected {{\"label\": n, \"point\": [x, y] or "
                        "[x, y, z], \"positive\": true | false}")
    return Click(label, float(point[0]), float(point[1]), positive, int(point[2]) if len(point) == 3 else 0)


def _json_text(value: Any, limit: int = 80) -> str:
    import json

    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."
