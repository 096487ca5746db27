"""Inference over a set of per-group models, loaded lazily, each case routed by its name (torch-free)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..constants import DAFT_MANIFEST, FORMAT_DAFT
from .modality import UNKNOWN
from .npz import read_case
from .predictor import CaseResult, Predictor
from .router import Router


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The `daft.json` of a saved or exported data-aware model, checked."""
    path = Path(directory) / DAFT_MANIFEST
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a data-aware model manifest ({error})") from error
    if meta.get("format") != FORMAT_DAFT or "router" not in meta:
        raise ValueError(f"{path}: key 'format' is {meta.get('format')!r} (expected {FORMAT_DAFT!r}) "
                         "or key 'router' is missing")
    return meta


class RoutedPredictor:
    """A `Predictor` per router group, built on first use from `sources` (compiled folders or models)."""

    def __init__(self, router: Router, sources: dict[str, Any], **predictor_kwargs: Any) -> None:
        missing = [g for g in router.names if g not in sources]
        if missing:
            raise ValueError(f"no model for groups {missing}; sources has {sorted(sources)}")
        self.router, self.sources, self.kwargs = router, dict(sources), predictor_kwargs
        self._predictors: dict[str, Predictor] = {}

    @classmethod
    def open(cls, directory: str | Path, backend: str | None = None, threads: int | None = None,
             precision: str | None = None, **predictor_kwargs: Any) -> "RoutedPredictor":
        """The folder written by `DataAwareModel.export` (its `daft.json` and one compiled folder per group)."""
        from .compiled import load

        directory = Path(directory)
        meta = read_manifest(directory)
        if "compiled" not in meta:
            raise ValueError(f"{directory / DAFT_MANIFEST}: no key 'compiled'; a torch data-aware folder opens "
                             "through medsamlite.open")
        sources = {g: Lazy(lambda p=directory / sub: load(p, backend=backend, precision=precision, threads=threads))
                   for g, sub in meta["compiled"].items()}
        return cls(Router.from_dict(meta["router"]), sources, **predictor_kwargs)

    def with_options(self, **predictor_kwargs: Any) -> "RoutedPredictor":
        """The same groups and models with these `Predictor` options (for models not loaded yet)."""
        return RoutedPredictor(self.router, self.sources, **{**self.kwargs, **predictor_kwargs})

    @property
    def loaded(self) -> list[str]:
        """Groups whose model has been loaded so far."""
        return sorted(self._predictors)

    def predictor(self, group: str) -> Predictor:
        if group not in self._predictors:
            source = self.sources[group]
            self._predictors[group] = Predictor(source() if isinstance(source, Lazy) else source, **self.kwargs)
        return self._predictors[group]

    def route(self, path: str | Path) -> str:
        """The group of a case file; its image is read only when a classifier must decide."""
        image = None
        if self.router.classifier is not None and self.router.modality(path) == UNKNOWN:
            image = read_case(Path(path)).imgs
        return self.router.route(path, image)

    def predict_file(self, in_path: str | Path, out_path: str | Path) -> CaseResult:
        return self.predictor(self.route(in_path)).predict_file(in_path, out_path)


class Lazy:
    """A `RoutedPredictor` source built on first use: `Lazy(lambda: load(folder))`."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self.load = load

    def __call__(self) -> Any:
        return self.load()


def as_predictor(engine: Any, **options: Any) -> Predictor | RoutedPredictor:
    """A `Predictor` with `options` for an engine or model; a `RoutedPredictor` with its options replaced."""
    if isinstance(engine, RoutedPredictor):
        return engine.with_options(**options)
    return Predictor(engine, **options)
