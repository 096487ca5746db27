"""`PreparedDataset`: training items read from the layout `medsamlite data prepare` writes (memory-mapped).

One item per stored slice (every labelled slice of a 3D case, the image of a 2D case), in the
index's order: cases in source order, slices ascending — the order of `NpzSliceDataset(src,
slices="all")`. Items are built by `build_item` from the same slice, labels and generator (seeded by
(seed, epoch, index)) as the `.npz` dataset builds them, so the two agree pixel for pixel.

The index is memory-mapped at construction (a 1M-entry index opens in well under a second); the
case arrays are memory-mapped on first use in each process and kept in a small LRU, so DataLoader
workers (fork or spawn) each open their own maps and never share a file position.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import ModelConfig
from ..constants import FORMAT_PREPARED
from .augment import Augmentation
from .datasets import annotated, check_annotated, item_spec
from .items import build_item
from .prepare import CASES_DIR, CASES_FILE, IMAGE_FILE, INDEX_FILE, LABELS_FILE, MANIFEST, MODALITY_CODES


def open_index(root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The memory-mapped index and case table of a prepared folder; a one-line error if it is not one."""
    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"{root / MANIFEST}: cannot be read ({type(error).__name__}); expected a folder "
                                "written by `medsamlite data prepare`") from None
    if manifest.get("format") != FORMAT_PREPARED:
        raise ValueError(f"{root / MANIFEST}: key 'format' is {manifest.get('format')!r}; expected {FORMAT_PREPARED!r}")
    return np.load(root / INDEX_FILE, mmap_mode="r"), np.load(root / CASES_FILE, mmap_mode="r")


def item_bounds(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end rows of each item (one (case, stored slice) run of the sorted index)."""
    case, row = np.asarray(index["case"]), np.asarray(index["row"])
    cut = np.flatnonzero((case[1:] != case[:-1]) | (row[1:] != row[:-1])) + 1
    return np.concatenate([[0], cut]).astype(np.int64), np.append(cut, len(index)).astype(np.int64)


class PreparedDataset(Dataset):
    """Box-prompted training items from a prepared folder; the options are `NpzSliceDataset`'s.

    `cases` keeps only the named cases (e.g. one side of `split_cases(ds.case_names)`);
    `max_per_modality=N` keeps at most N items per modality (a seeded draw, for validation);
    `open_cases` bounds the case files kept mapped per process.
    """

    def __init__(self, root: str | Path, config: ModelConfig | None = None, *, targets_per_image: int | None = None,
                 input_size: int | None = None, normalization: str | None = None, mask_size: int | None = None,
                 augment: bool = True, box_shift: int = 5, full_mask: bool = False, num_classes: int | None = None,
                 annotated_classes: Mapping[str, Sequence[int]] | None = None,
                 augmentation: Augmentation | None = None, cases: Iterable[str | os.PathLike] | None = None,
                 max_per_modality: int | None = None, seed: int = 0, open_cases: int = 64) -> None:
        self.root = Path(root)
        self.spec = item_spec(config, input_size=input_size, normalization=normalization, mask_size=mask_size,
                              box_shift=box_shift, flips=augment, full_mask=full_mask, num_classes=num_classes,
                              targets_per_image=targets_per_image, augmentation=augmentation if augment else None)
        self.num_classes, self.annotated_classes = num_classes, check_annotated(annotated_classes, num_classes)
        self.seed, self.epoch, self.open_cases = seed, 0, open_cases
        self._index, self._cases = open_index(self.root)
        starts, ends = item_bounds(self._index)
        keep = np.ones(len(starts), dtype=bool)
        if cases is not None:
            wanted = np.array([str(c).encode() for c in cases], dtype=bytes)
            known = np.isin(np.asarray(self._cases["name"]), wanted)
            keep &= known[np.asarray(self._index["case"][starts])]
        codes = np.asarray(self._index["modality"][starts])
        if max_per_modality is not None:
            keep &= self._cap(codes, keep, max_per_modality)
        self._starts, self._ends, self._codes = starts[keep], ends[keep], codes[keep]
        if len(self._starts) == 0:
            raise ValueError(f"{self.root}: no items left (cases={cases is not None}, max_per_modality={max_per_modality})")
        self._open: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._pid = os.getpid()

    def _cap(self, codes: np.ndarray, keep: np.ndarray, n: int) -> np.ndarray:
        """At most `n` of the kept items per modality, drawn with the dataset's seed."""
        rng = np.random.default_rng([self.seed, n])
        capped = np.zeros_like(keep)
        for code in np.unique(codes[keep]):
            members = np.flatnonzero(keep & (codes == code))
            capped[members if len(members) <= n else rng.choice(members, n, replace=False)] = True
        return capped

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_index=None, _cases=None, _open=OrderedDict())  # maps are reopened in the worker
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._index, self._cases = open_index(self.root)

    @property
    def case_names(self) -> list[str]:
        """Every case of the prepared folder (its relative name), for `split_cases`."""
        return [n.decode() for n in self._cases["name"]]

    @property
    def case_modalities(self) -> dict[str, str]:
        """Each case's modality by name, for `split_cases(ds.case_names, modalities=ds.case_modalities)`."""
        return {n.decode(): MODALITY_CODES[int(m)] for n, m in zip(self._cases["name"], self._cases["modality"])}

    @property
    def modalities(self) -> list[str]:
        """One modality per item (for `ModalityBalancedSampler`)."""
        return np.asarray(MODALITY_CODES, dtype=object)[self._codes].tolist()

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's random choices (labels, flips, boxes, augmentation)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._starts)

    def _arrays(self, case_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The case's image and label maps, opened once per process (LRU of `open_cases`)."""
        if self._pid != os.getpid():  # forked into a worker: the parent's maps are not ours
            self._open, self._pid = OrderedDict(), os.getpid()
        if case_id in self._open:
            self._open.move_to_end(case_id)
            return self._open[case_id]
        folder = self.root / CASES_DIR / self._cases["name"][case_id].decode()
        arrays = np.load(folder / IMAGE_FILE, mmap_mode="r"), np.load(folder / LABELS_FILE, mmap_mode="r")
        self._open[case_id] = arrays
        if len(self._open) > self.open_cases:
            self._open.popitem(last=False)
        return arrays

    def __getitem__(self, index: int) -> dict:
        rows = np.array(self._index[self._starts[index]:self._ends[index]])
        case_id, z, row = int(rows["case"][0]), int(rows["slice"][0]), int(rows["row"][0])
        image, gts = self._arrays(case_id)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        item = build_item(np.array(image[row]), np.array(gts[row]), rows["label"].astype(gts.dtype), rng, self.spec)
        name = PurePosixPath(self._cases["name"][case_id].decode()).name
        item.update(modality=MODALITY_CODES[int(rows["modality"][0])], case=name, slice=z)
        if self.num_classes is not None:
            item["annotated"] = torch.from_numpy(annotated(self.annotated_classes, self.num_classes, name,
                                                           item["modality"]))
        return item
