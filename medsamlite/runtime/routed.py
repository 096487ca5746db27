"""Inference over a set of per-group models, loaded lazily, each case routed by its name (torch-free)."""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from ..constants import DAFT_MANIFEST, FORMAT_DAFT
from .engine import describe
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
    """A `Predictor` per router group, built on first use from `sources` (compiled folders or models).

    At most `max_loaded` groups' predictors are held: loading one more evicts the least recently used, and
    an engine that was built here from a `Lazy` source is closed (`engine.close()`, where it has one); a
    source given as an engine stays the caller's and is only dropped.
    """

    def __init__(self, router: Router, sources: dict[str, Any], max_loaded: int = 2,
                 **predictor_kwargs: Any) -> None:
        missing = [g for g in router.names if g not in sources]
        if missing:
            raise ValueError(f"no model for groups {missing}; sources has {sorted(sources)}")
        if int(max_loaded) < 1:
            raise ValueError(f"max_loaded must be >= 1, got {max_loaded}")
        self.router, self.sources, self.kwargs = router, dict(sources), predictor_kwargs
        self.max_loaded = int(max_loaded)
        self._predictors: OrderedDict[str, Predictor] = OrderedDict()
        self.served: dict[str, dict[str, Any]] = {}  # group -> its engine's backend and precision, once loaded

    @classmethod
    def open(cls, directory: str | Path, backend: str | None = None, threads: int | None = None,
             precision: str | None = None, max_loaded: int = 2, **predictor_kwargs: Any) -> "RoutedPredictor":
        """The folder written by `DataAwareModel.export` (its `daft.json` and one compiled folder per group)."""
        from .compiled import load

        directory = Path(directory)
        meta = read_manifest(directory)
        if "compiled" not in meta:
            raise ValueError(f"{directory / DAFT_MANIFEST}: no key 'compiled'; a torch data-aware folder opens "
                             "through medsamlite.open")
        sources = {g: Lazy(lambda p=directory / sub: load(p, backend=backend, precision=precision, threads=threads))
                   for g, sub in meta["compiled"].items()}
        return cls(Router.from_dict(meta["router"]), sources, max_loaded, **predictor_kwargs)

    def with_options(self, **predictor_kwargs: Any) -> "RoutedPredictor":
        """The same groups and models with these `Predictor` options (for models not loaded yet)."""
        return RoutedPredictor(self.router, self.sources, self.max_loaded, **{**self.kwargs, **predictor_kwargs})

    @property
    def loaded(self) -> list[str]:
        """Groups whose model is held now."""
        return sorted(self._predictors)

    def predictor(self, group: str) -> Predictor:
        """The group's predictor, loaded (and the least recently used one evicted) when it is not held."""
        if group in self._predictors:
            self._predictors.move_to_end(group)
            return self._predictors[group]
        while len(self._predictors) >= self.max_loaded:
            self._evict(next(iter(self._predictors)))
        source = self.sources[group]
        predictor = Predictor(source() if isinstance(source, Lazy) else source, **self.kwargs)
        self._predictors[group] = predictor
        engine = predictor.engine
        self.served[group] = describe(engine)
        return predictor

    def _evict(self, group: str) -> None:
        predictor = self._predictors.pop(group)
        close = getattr(predictor.engine, "close", None)
        if isinstance(self.sources[group], Lazy) and callable(close):
            close()

    def close(self) -> None:
        """Drop every loaded group (closing the engines built here)."""
        for group in list(self._predictors):
            self._evict(group)

    def route(self, path: str | Path) -> str:
        """The group of a case file; its image is read only when a classifier must decide."""
        image = None
        if self.router.classifier is not None and self.router.modality(path) == UNKNOWN:
            image = read_case(Path(path)).imgs
        return self.router.route(path, image)

    def predict_file(self, in_path: str | Path, out_path: str | Path, overlay: str | Path | None = None
                     ) -> CaseResult:
        group = self.route(in_path)
        result = self.predictor(group).predict_file(in_path, out_path, overlay)
        result.group = group
        return result


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
