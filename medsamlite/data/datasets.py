"""Training datasets over a folder of task-format `.npz` cases, preprocessed exactly as inference does.

Two layouts are read: the task's (`imgs/<name>.npz` with `imgs`, `boxes`, `spacing` beside
`gts/<name>.npz` with `gts`, as the synthetic generator writes them) and the challenge's training
files (one `.npz` holding both `imgs` and `gts`, in any sub-folders). 2D images are (H, W, 3) or
(H, W); 3D volumes (D, H, W) are used as slices. Images go through `preprocess.preprocess_image`,
boxes through `preprocess.scale_boxes`, so the model sees in training what it sees at inference.

Randomness (slice, label, flips, box widening) comes from a generator seeded with
(seed, epoch, index): an item is the same whatever the number of DataLoader workers, `set_epoch`
gives a new draw per epoch, and a resumed run replays the same items. Call `set_epoch` before each
epoch's iterator is created (workers get a fresh copy of the dataset unless `persistent_workers`).
"""
from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import ModelConfig
from ..runtime.npz import CaseError, kind_from_name
from ..runtime.preprocess import preprocess_image
from ..runtime.modality import case_stem, parse_modality
from .augment import Augmentation
from .cases import load_key, case_files, gts_path, read_image, read_labels
from .items import ItemSpec, build_item, flip, mask_to_frame

SLICE_MODES = ("random", "all")


def split_cases(files: Sequence[str | Path], val_fraction: float = 0.2, seed: int = 0,
                modality_overrides: Mapping[str, str] | None = None, modalities: Mapping[str, str] | None = None
                ) -> tuple[list[Path], list[Path]]:
    """Split case files (never slices of one case) into train and validation, stratified by modality.

    Each modality with at least two cases keeps at least one in each part. `modalities` gives each
    file's modality by name (e.g. `PreparedDataset.case_modalities`); by default it is parsed from the name.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    groups: dict[str, list[Path]] = {}
    for f in sorted(Path(f) for f in files):
        modality = modalities[str(f)] if modalities is not None else parse_modality(f, modality_overrides)
        groups.setdefault(modality, []).append(f)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for modality in sorted(groups):
        group = [groups[modality][i] for i in rng.permutation(len(groups[modality]))]
        n_val = int(round(len(group) * val_fraction))
        n_val = min(max(n_val, 1), len(group) - 1) if len(group) > 1 else 0
        val += group[:n_val]
        train += group[n_val:]
    return sorted(train), sorted(val)


def item_spec(config: ModelConfig | None = None, **options) -> ItemSpec:
    """An `ItemSpec` for `config` (input size, normalisation, low-res size); options given as None keep the defaults."""
    defaults = ({"input_size": config.input_size, "normalization": config.normalization,
                 "mask_size": config.low_res_size} if config else {})
    return ItemSpec(**{**defaults, **{k: v for k, v in options.items() if v is not None}})


def check_annotated(patterns: Mapping[str, Sequence[int]] | None, num_classes: int | None
                    ) -> dict[str, list[int]]:
    """`annotated_classes` as a dict, checked when a data set is made (not at its first item): ids 1..C."""
    patterns = {str(k): [int(c) for c in v] for k, v in (patterns or {}).items()}
    if patterns and not num_classes:
        raise ValueError("annotated_classes needs num_classes (the class outputs the ids refer to)")
    for pattern, classes in patterns.items():
        bad = [c for c in classes if not 1 <= c <= num_classes]
        if bad:
            raise ValueError(f"annotated_classes[{pattern!r}] has classes {bad}; expected 1..{num_classes}")
    return patterns


def annotated(patterns: Mapping[str, Sequence[int]], num_classes: int, case: str, modality: str = "") -> np.ndarray:
    """(C,) bool: the classes the source data set of `case` labels (`patterns` as `check_annotated` returns them):
    the first glob that matches the case name or its `modality` (e.g. "CT"); all classes when none matches."""
    for pattern, classes in patterns.items():
        if fnmatch.fnmatchcase(case, pattern) or (modality and fnmatch.fnmatchcase(modality, pattern)):
            flags = np.zeros(num_classes, dtype=bool)
            flags[np.asarray(classes, dtype=np.int64) - 1] = True
            return flags
    return np.ones(num_classes, dtype=bool)


@dataclass(frozen=True)
class _Entry:
    case: int
    slice: int  # -1: a 2D case, or a 3D case whose slice is drawn per epoch


class NpzCases(Dataset):
    """Shared case listing, reading, slicing, modality and seeding of the two datasets below."""

    def __init__(self, cases: str | Path | Sequence[str | Path], slices: str = "random", augment: bool = True,
                 modality_overrides: Mapping[str, str] | None = None, seed: int = 0) -> None:
        if slices not in SLICE_MODES:
            raise ValueError(f"slices must be one of {SLICE_MODES}, got {slices!r}")
        self.files = case_files(cases)
        self.slices, self.augment, self.seed, self.epoch = slices, augment, seed, 0
        self.case_modalities = [parse_modality(f, modality_overrides) for f in self.files]
        self.entries: list[_Entry] = []
        self.candidate_slices: list[np.ndarray] = []  # per case: the slices an item may use
        self.skipped: list[str] = []
        for i, f in enumerate(self.files):
            candidates = self._candidate_slices(f)
            self.candidate_slices.append(candidates)
            if candidates.size == 0:
                self.skipped.append(f"{f}: no labelled pixel")
            elif candidates[0] < 0 or slices == "random":
                self.entries.append(_Entry(i, -1))
            else:
                self.entries.extend(_Entry(i, int(z)) for z in candidates)
        if not self.entries:
            raise ValueError(f"no usable cases among {len(self.files)} files: {'; '.join(self.skipped[:5])}")
        if self.skipped:
            warnings.warn(f"{len(self.skipped)} case(s) skipped: {'; '.join(self.skipped[:5])}", stacklevel=2)

    def _candidate_slices(self, path: Path) -> np.ndarray:
        """[-1] for a usable 2D case, the usable slice indices of a 3D case, empty if none."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's random choices (slices, labels, flips, boxes)."""
        self.epoch = epoch

    @property
    def modalities(self) -> list[str]:
        """One modality per item (for `ModalityBalancedSampler`)."""
        return [self.case_modalities[e.case] for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _slice(self, index: int, rng: np.random.Generator) -> tuple[Path, int, np.ndarray, tuple[int, ...]]:
        """The item's case file, slice index (-1 for 2D), 2D image and the whole image's shape."""
        entry = self.entries[index]
        path = self.files[entry.case]
        image = read_image(path)
        z = entry.slice
        if z < 0 and self.candidate_slices[entry.case][0] >= 0:
            z = int(rng.choice(self.candidate_slices[entry.case]))
        return path, z, (image if z < 0 else image[z]), image.shape


class NpzSliceDataset(NpzCases):
    """Box-prompted training items: one target per sample (a random label of a random labelled slice).

    Each item is a dict: `image` (3, S, S) float32 as inference preprocesses it; `box` (4,) in the S
    frame, the target's bounding box widened by 0..`box_shift` px per side; `mask` (1, m, m) float32,
    the target in the decoder's low-res frame (m = `mask_size`, 256 for every registered model);
    with `full_mask=True` also `mask_full` (1, S, S) for a loss at input resolution; `modality`,
    `case`, `slice` (-1 for 2D) and `label`. With `num_classes`, also `targets` (C, m, m), one
    channel per class 1..C, and `annotated` (C,) bool, which classes the case's source data set
    labels (`annotated_classes`: glob on the case name or modality -> class ids; default all), for the
    partial-label losses. `slices="random"`: one item per 3D volume, its slice drawn per epoch
    among the labelled ones; `"all"`: one item per labelled slice. With `targets_per_image=K`, up to
    K labels drawn without replacement: `boxes` (K, 4), `masks` (K, 1, m, m), `valid` (K,) and
    `labels` (K,) replace `box`, `mask` and `label` (padding rows are zeros). `augmentation` adds
    MONAI affine and intensity jitter after the flips (`Augmentation()`; off by default).
    """

    def __init__(self, cases: str | Path | Sequence[str | Path], config: ModelConfig | None = None, *,
                 input_size: int | None = None, normalization: str | None = None, mask_size: int | None = None,
                 slices: str = "random", augment: bool = True, box_shift: int = 5, full_mask: bool = False,
                 num_classes: int | None = None, annotated_classes: Mapping[str, Sequence[int]] | None = None,
                 modality_overrides: Mapping[str, str] | None = None, seed: int = 0,
                 targets_per_image: int | None = None, augmentation: Augmentation | None = None) -> None:
        self.spec = item_spec(config, input_size=input_size, normalization=normalization, mask_size=mask_size,
                              box_shift=box_shift, flips=augment, full_mask=full_mask, num_classes=num_classes,
                              targets_per_image=targets_per_image, augmentation=augmentation if augment else None)
        self.num_classes, self.annotated_classes = num_classes, check_annotated(annotated_classes, num_classes)
        super().__init__(cases, slices, augment, modality_overrides, seed)

    def _candidate_slices(self, path: Path) -> np.ndarray:
        gts = load_key(gts_path(path), "gts")  # only the labels: the image is checked when an item is read
        if gts.ndim not in (2, 3) or not np.issubdtype(gts.dtype, np.integer):
            raise CaseError(f"{gts_path(path)}: key 'gts' has shape {gts.shape} and dtype {gts.dtype}; "
                            "expected integer labels (H, W) for 2D or (D, H, W) for 3D")
        if self.num_classes is not None and gts.max() > self.num_classes:
            raise CaseError(f"{gts_path(path)}: key 'gts' has label {gts.max()}; expected labels 0..{self.num_classes}")
        if gts.ndim == 2:
            return np.array([-1] if gts.any() else [], dtype=np.int64)
        return np.flatnonzero(gts.reshape(gts.shape[0], -1).any(axis=1))

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index)
        path, z, image, shape = self._slice(index, rng)
        gts = read_labels(path, shape)
        gts = gts if z < 0 else gts[z]
        item = build_item(image, gts, np.unique(gts[gts > 0]), rng, self.spec)
        item.update(modality=self.case_modalities[self.entries[index].case], case=case_stem(path), slice=z)
        if self.num_classes is not None:
            item["annotated"] = torch.from_numpy(annotated(self.annotated_classes, self.num_classes, case_stem(path),
                                                           item["modality"]))
        return item


class NpzImageDataset(NpzCases):
    """Images only, preprocessed once per model input (e.g. a student and a teacher) for distillation.

    `inputs` maps a name to a `ModelConfig` or an (input_size, normalization) pair; each item holds
    one (3, S, S) float32 tensor per name, all from the same (randomly flipped) 2D image or slice,
    its extent `<name>_hw` (h, w) in that frame (the rest is padding), plus `modality` and `case`.
    3D volumes give any slice (`slices="random"`: one per volume per epoch; `"all"`: every slice).
    No labels are needed.
    """

    def __init__(self, cases: str | Path | Sequence[str | Path],
                 inputs: Mapping[str, ModelConfig | tuple[int, str]], *, slices: str = "random",
                 augment: bool = True, modality_overrides: Mapping[str, str] | None = None, seed: int = 0) -> None:
        if not inputs:
            raise ValueError("inputs must name at least one model input, e.g. {'student': config}")
        self.inputs = {k: (v.input_size, v.normalization) if isinstance(v, ModelConfig) else (int(v[0]), str(v[1]))
                       for k, v in inputs.items()}
        super().__init__(cases, slices, augment, modality_overrides, seed)

    def _candidate_slices(self, path: Path) -> np.ndarray:
        image = read_image(path)
        is_3d = image.ndim == 3 and (kind_from_name(path.name) == "3D" or image.shape[2] not in (1, 3))
        return np.arange(image.shape[0]) if is_3d else np.array([-1], dtype=np.int64)

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index)
        path, z, image, _ = self._slice(index, rng)
        if self.augment:
            (image,) = flip([image], rng)
        item: dict = {}
        for k, (size, norm) in self.inputs.items():
            x, hw = preprocess_image(image, size, norm)
            item[k], item[f"{k}_hw"] = torch.from_numpy(x[0]), torch.tensor(hw)  # hw: the image's extent in the frame
        item.update(modality=self.case_modalities[self.entries[index].case], case=case_stem(path), slice=z)
        return item

