"""Imaging modality of a case from its file name (the data-aware router and the data sets use it).

Task cases are named `2DBox_<Modality>_<id>.npz` / `3DBox_<Modality>_<id>.npz`; the challenge's
training files start with the modality (`CT_AbdomenCT1K_...`, `XRay_...`, `Microscopy_...`). The
modality token is mapped to a canonical name through `ALIASES` (case-insensitive), so that the
test set's `Microscope` and the training set's `Microscopy` are one modality. Anything else is
`UNKNOWN`; callers choose their fallback (e.g. a general model). `overrides` (glob on the file
name -> modality) win over the parsed token, for data sets whose names do not follow the convention.
"""
from __future__ import annotations

import fnmatch
from pathlib import PurePath
from typing import Mapping

from ..constants import MODALITIES, TEST_NAME_TOKENS

UNKNOWN = "unknown"
DIMENSION_PREFIXES = ("2DBox", "3DBox")

# lower-case token -> canonical modality; spellings seen in the task's test and training names
ALIASES: dict[str, str] = {
    **{m.lower(): m for m in MODALITIES}, **{token.lower(): m for m, token in TEST_NAME_TOKENS.items()},
    "mri": "MR", "ultrasound": "US",
    "mammo": "Mammography", "dermoscope": "Dermoscopy", "endoscope": "Endoscopy", "petct": "PET",
}


def case_stem(name: str | PurePath) -> str:
    """The file name without folders and without a `.npz` suffix."""
    stem = PurePath(name).name
    return stem[:-4] if stem.lower().endswith(".npz") else stem


def parse_modality(name: str | PurePath, overrides: Mapping[str, str] | None = None) -> str:
    """Canonical modality of a case file name, or `UNKNOWN` when the name does not say.

    `overrides` maps glob patterns on the file stem (e.g. ``{"*_CTA_*": "CT"}``) to a modality;
    the first matching pattern wins over the parsed name.
    """
    stem = case_stem(name)
    for pattern, modality in (overrides or {}).items():
        if fnmatch.fnmatchcase(stem, pattern) or fnmatch.fnmatchcase(stem + ".npz", pattern):
            return modality
    tokens = stem.split("_")
    if tokens[0] in DIMENSION_PREFIXES:
        tokens = tokens[1:]
    return ALIASES.get(tokens[0].lower(), UNKNOWN) if tokens else UNKNOWN
