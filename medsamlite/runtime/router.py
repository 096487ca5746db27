"""Routing a case to a modality group (torch-free, on the inference path).

A case's modality comes from the task's file-name convention (`medsamlite.runtime.modality.parse_modality`:
`2DBox_<Modality>_…`, `3DBox_<Modality>_…`, or training names starting with the modality). Groups gather
modalities that share one adapter or model (DAFT: CT, MR and PET together as "3D"). A name whose modality
is unknown, or whose modality belongs to no group, goes to the `fallback` group — by default "general",
the shared base model without any per-modality adapter. When a meta-feature classifier is attached and
the image is given, it decides the modality of names that do not say it.

A group member is a modality (`CT`: every CT case) or a modality at one dimension (`CT@3D`: CT volumes only,
`CT@2D`: CT slices only); a case of a known dimension goes to its `MODALITY@DIM` group first, then to its
`MODALITY` group. The dimension comes from the task's `2DBox_` / `3DBox_` prefix, else from the file's boxes
and image header (`npz.peek_kind`), read only when some group names a dimension.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Mapping

import numpy as np

from .modality import UNKNOWN, parse_modality
from .npz import kind_from_name, peek_kind
from .metafeatures import MetaClassifier

# DAFT's models per modality: one for the 3D modalities, one for each 2D modality
DEFAULT_GROUPS: dict[str, tuple[str, ...]] = {
    "3D": ("CT", "MR", "PET"), "XRay": ("XRay",), "Dermoscopy": ("Dermoscopy",), "Endoscopy": ("Endoscopy",),
    "Fundus": ("Fundus",), "Microscopy": ("Microscopy",), "OCT": ("OCT",), "Mammography": ("Mammography",),
    "US": ("US",),
}
FALLBACK = "general"
DIMENSIONS = ("2D", "3D")


def split_member(member: str) -> tuple[str, str | None]:
    """`"CT@3D"` -> ("CT", "3D"); `"CT"` -> ("CT", None)."""
    modality, at, dimension = member.partition("@")
    if not modality or (at and dimension not in DIMENSIONS):
        raise ValueError(f"group member {member!r}: expected MODALITY or MODALITY@2D / MODALITY@3D")
    return modality, dimension or None


def parse_groups(spec: str) -> dict[str, tuple[str, ...]]:
    """`"3D=CT@3D,MR@3D;XRay"` -> {"3D": ("CT@3D", "MR@3D"), "XRay": ("XRay",)}; a bare name is its own group."""
    groups: dict[str, tuple[str, ...]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, _, members = part.partition("=")
        modalities = tuple(m.strip() for m in (members or name).split(",") if m.strip())
        if not name.strip() or not modalities:
            raise ValueError(f"group spec {part!r} in {spec!r}: expected NAME=MODALITY[,MODALITY...]")
        for member in modalities:
            split_member(member)
        groups[name.strip()] = modalities
    if not groups:
        raise ValueError(f"group spec {spec!r} names no group; expected e.g. '3D=CT,MR,PET;XRay=XRay'")
    return groups


@dataclass
class Router:
    """Maps a case (file name, optionally its image) to the name of a modality group."""

    groups: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_GROUPS))
    fallback: str = FALLBACK
    overrides: dict[str, str] = field(default_factory=dict)  # glob on the file name -> modality
    classifier: MetaClassifier | None = None

    def __post_init__(self) -> None:
        owner: dict[tuple[str, str | None], str] = {}
        for group, members in self.groups.items():
            for m in members:
                key = split_member(m)
                if key in owner:
                    raise ValueError(f"modality {m!r} is in groups {owner[key]!r} and {group!r}; each belongs to one")
                owner[key] = group
        if self.fallback in self.groups:
            raise ValueError(f"fallback {self.fallback!r} is also a modality group; give it its own name")
        self._owner = owner
        self.by_dimension = any(dimension is not None for _, dimension in owner)

    def modality(self, name: str | PurePath, image: np.ndarray | None = None) -> str:
        """The case's modality: from its name, else from the classifier when the image is given."""
        modality = parse_modality(name, self.overrides)
        if modality == UNKNOWN and self.classifier is not None and image is not None:
            modality = self.classifier.predict(image)
        return modality

    def group_of(self, modality: str, dimension: str | None = None) -> str:
        """The group holding `modality` at `dimension` ("2D" / "3D"), else `modality` at any, else the fallback."""
        return self._owner.get((modality, dimension)) or self._owner.get((modality, None), self.fallback)

    def dimension(self, name: str | PurePath) -> str | None:
        """"2D" / "3D" of the case `name` when some group needs it: its prefix, else its file (header only)."""
        if not self.by_dimension:
            return None
        kind = kind_from_name(PurePath(name).name)
        if kind is None and Path(name).is_file():
            kind = peek_kind(name)
        return kind

    def route(self, name: str | PurePath, image: np.ndarray | None = None, dimension: str | None = None) -> str:
        """The group that segments the case `name` (`dimension` found from the name or file when not given)."""
        return self.group_of(self.modality(name, image), dimension or self.dimension(name))

    @property
    def names(self) -> list[str]:
        """Every group a case can be routed to, the fallback last."""
        return [*self.groups, self.fallback]

    def to_dict(self) -> dict[str, Any]:
        return {"groups": {g: list(m) for g, m in self.groups.items()}, "fallback": self.fallback,
                "overrides": dict(self.overrides),
                "classifier": self.classifier.to_dict() if self.classifier is not None else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Router":
        unknown = set(d) - {"groups", "fallback", "overrides", "classifier"}
        if unknown or "groups" not in d:
            raise ValueError(f"router settings: unknown keys {sorted(unknown)} or no 'groups' (got {sorted(d)})")
        classifier = MetaClassifier.from_dict(d["classifier"]) if d.get("classifier") else None
        return cls({g: tuple(m) for g, m in d["groups"].items()}, d.get("fallback", FALLBACK),
                   dict(d.get("overrides") or {}), classifier)
